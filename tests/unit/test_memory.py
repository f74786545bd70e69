"""The up-front memory check of `dpokit dpo` counts by `dpokit plan`'s formula: one number for the same settings."""
import json

from dpokit.memory import estimate
from dpokit.plan import RUNTIME_CPU, layer_activation_elements
from dpokit.plan import PlanSettings, make_plan, model_shape


def llama_folder(tmp_path, name="m", layers=3):
    from transformers import LlamaConfig

    folder = tmp_path / name
    folder.mkdir()
    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=96, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False)
    (folder / "config.json").write_text(json.dumps(config.to_dict()))
    return folder


def test_the_check_equals_the_plan_at_padded_rows_and_full_logits(tmp_path):
    folder = llama_folder(tmp_path)
    est = estimate(folder, dtype="bfloat16", micro_batch_pairs=3, max_length=128, separate_reference=True)
    settings = PlanSettings(device="cpu", batch_size=3, max_length=128, prompt_length=64, dtype="bfloat16",
                            layout="padded", full_logits=True, reference_cache="off")
    plan = make_plan(model_shape(str(folder)), settings)
    assert est.total == plan.total
    assert est.activations == plan.parts["activations"] + plan.parts["LM head"]


def test_the_check_by_hand(tmp_path):
    folder = llama_folder(tmp_path)
    params = model_shape(str(folder)).params
    est = estimate(folder, dtype="float32", micro_batch_pairs=2, max_length=64, separate_reference=False)
    tokens = 2 * 2 * 64  # chosen and rejected rows of 2 pairs, padded to max_length
    # 3 layers of 10·h + 4·I float32 elements per token; the LM head's logits, log-softmax and gradient in float32
    assert est.activations == tokens * 3 * (10 * 64 + 4 * 96) * 4 + 3 * tokens * 1000 * 4
    assert layer_activation_elements(64, 96) == 10 * 64 + 4 * 96
    assert (est.weights, est.gradients, est.optimizer, est.reference) == (4 * params, 4 * params, 8 * params, 0)
    assert est.runtime == RUNTIME_CPU


def test_a_live_reference_of_another_size_is_counted_at_its_own_size(tmp_path):
    policy, reference = llama_folder(tmp_path, "policy"), llama_folder(tmp_path, "reference", layers=1)
    est = estimate(policy, dtype="float32", micro_batch_pairs=1, max_length=64, separate_reference=True,
                   reference_path=reference)
    assert est.reference == 4 * model_shape(str(reference)).params < est.weights
