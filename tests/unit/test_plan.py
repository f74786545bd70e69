"""`dpokit plan`'s arithmetic: exact parameter counts from the meta device, and how each setting moves memory and time."""
import json
from dataclasses import replace

import pytest
import torch

from dpokit.errors import UserError
from dpokit.plan import layer_activation_elements
from dpokit.plan import GB, PlanSettings, alternatives, make_plan, model_shape, row_tokens


def llama_config(tmp_path, tied: bool):
    from transformers import LlamaConfig

    config = LlamaConfig(vocab_size=1000, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    path = tmp_path / f"config-{tied}.json"
    path.write_text(json.dumps(config.to_dict()))
    return config, path


@pytest.mark.parametrize("tied", [True, False])
def test_counts_equal_a_real_model_and_the_architecture_formula(tmp_path, tied):
    from transformers import LlamaForCausalLM

    config, path = llama_config(tmp_path, tied)
    shape = model_shape(str(path))
    real = LlamaForCausalLM(config)
    assert shape.params == sum(p.numel() for p in real.parameters())
    # By hand: V·h embedding (and an untied head), per layer q,o (h·h each), k,v (h·kv·d each), gated MLP 3·h·I,
    # two norms (h each); the final norm h.
    h, i, v, kv = 64, 96, 1000, 2 * 16
    layer = 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h
    assert shape.layer_params == layer
    assert shape.params == v * h * (1 if tied else 2) + 3 * layer + h
    assert shape.tied is tied and shape.embedding == shape.head == v * h
    assert (shape.kv_heads, shape.head_dim) == (2, 16)


@pytest.mark.filterwarnings("ignore::FutureWarning")  # transformers' own deprecation inside peft
def test_lora_count_equals_peft_on_a_real_model_and_the_formula(tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaForCausalLM

    config, path = llama_config(tmp_path, tied=False)
    shape = model_shape(str(path), lora_r=8)
    real = get_peft_model(LlamaForCausalLM(config), LoraConfig(r=8, target_modules="all-linear", task_type="CAUSAL_LM"))
    assert shape.lora_counted == "peft"
    assert shape.lora_params == sum(p.numel() for p in real.parameters() if p.requires_grad)
    h, i, kv = 64, 96, 32  # r × (in + out) for q, k, v, o, gate, up, down; never the LM head
    assert shape.lora_params == 3 * 8 * (2 * (h + h) + 2 * (h + kv) + 2 * (h + i) + (i + h))
    only_qv = model_shape(str(path), lora_r=8, lora_targets="q_proj,v_proj")
    assert only_qv.lora_params == 3 * 8 * ((h + h) + (h + kv))


@pytest.fixture(scope="module")
def shape(tmp_path_factory):
    _, path = llama_config(tmp_path_factory.mktemp("cfg"), tied=False)
    return model_shape(str(path), lora_r=8)


def test_sharding_splits_what_each_stage_promises(shape):
    base = PlanSettings(gpus=8, batch_size=8, max_length=256, prompt_length=128, dtype="float32")
    ddp, zero2, fsdp = (make_plan(shape, replace(base, zero=z)).parts for z in ("0", "2", "fsdp"))
    assert ddp["weights"] == shape.params * 4 and ddp["gradients"] == shape.params * 4
    assert ddp["optimizer"] == 2 * shape.params * 4  # torch AdamW: two moments in the parameter dtype
    assert zero2["weights"] == ddp["weights"] and zero2["gradients"] == ddp["gradients"] // 8
    assert zero2["optimizer"] == shape.params * 12 // 8  # DeepSpeed: its own fp32 master copy + two moments, split
    assert fsdp["weights"] == ddp["weights"] // 8 and fsdp["gathered layers"] > 0
    lora_zero2 = make_plan(shape, replace(base, zero="2", lora=True)).parts  # adapters: torch AdamW's moments, split
    assert lora_zero2["optimizer"] == 2 * shape.lora_params * 4 // 8
    assert lora_zero2["gradients"] == shape.lora_params * 4 // 8
    assert ddp["activations"] == fsdp["activations"]  # sharding does not split a device's own activations


def test_reference_copy_only_when_live_and_not_lora(shape):
    s = PlanSettings(batch_size=4, max_length=256, prompt_length=128, dtype="bfloat16")
    assert make_plan(shape, s).parts["reference"] == 0  # cached log-probs
    assert make_plan(shape, replace(s, reference_cache="off")).parts["reference"] == shape.params * 2
    assert make_plan(shape, replace(s, reference_cache="off", lora=True)).parts["reference"] == 0  # adapters off


def test_checkpointing_lean_head_and_micro_batch_shrink_what_they_should(shape):
    s = PlanSettings(batch_size=8, max_length=512, prompt_length=128, dtype="float32")
    plain = make_plan(shape, s).parts
    padded = replace(s, layout="padded")  # no (T × T) mask, which checkpointing does not shrink
    full = make_plan(shape, padded).parts["activations"]
    checkpointed = make_plan(shape, replace(padded, gradient_checkpointing=True)).parts["activations"]
    tokens, per_token = 8 * 2 * 512, layer_activation_elements(shape.hidden, shape.intermediate)
    assert full == tokens * shape.layers * per_token * 4
    # every layer's input, plus one recomputed layer and the gradients of its activations
    assert checkpointed == tokens * (shape.layers * shape.hidden + 2 * per_token) * 4 < full
    assert make_plan(shape, replace(s, full_logits=True)).parts["LM head"] > plain["LM head"]
    half = make_plan(shape, replace(s, grad_accum=2)).parts
    assert half["activations"] == plain["activations"] // 2
    tokens, answers = row_tokens(s)
    assert (tokens, answers) == (128 + 2 * 384, 2 * 384)  # [prompt | chosen | rejected], prompt once
    assert row_tokens(replace(s, layout="padded")) == (2 * 512, 2 * 384)


def test_step_flops_a_live_reference_adds_one_forward_and_lora_drops_weight_gradients(shape):
    s = PlanSettings(batch_size=8, max_length=256, prompt_length=128)
    cached, live = make_plan(shape, s), make_plan(shape, replace(s, reference_cache="off"))
    assert live.step_flops == pytest.approx(cached.step_flops * 4 / 3)
    assert make_plan(shape, replace(s, lora=True)).step_flops == pytest.approx(cached.step_flops * 2 / 3)
    assert cached.step_seconds == pytest.approx(cached.step_flops / (989e12 * 0.4))
    assert cached.reference_pass_flops > 0 and live.reference_pass_flops == 0


def test_what_does_not_fit_gets_suggestions_that_do(shape):
    tight = PlanSettings(batch_size=8, max_length=1024, prompt_length=512, dtype="float32", reference_cache="off")
    plan = make_plan(shape, tight)
    small = replace(tight, gpu_mem_gb=plan.total / GB)  # fits only at ≤ 90% of the memory
    assert not make_plan(shape, small).fits
    options = alternatives(shape, small)
    assert options and all(p.fits for _, p in options)


def test_impossible_settings_are_refused(shape):
    from dpokit.errors import UserError

    with pytest.raises(UserError, match="batch_size"):
        make_plan(shape, PlanSettings(gpus=8, batch_size=12))
    with pytest.raises(UserError, match="mixed_precision"):
        make_plan(shape, PlanSettings(mixed_precision="bf16", dtype="bfloat16"))


def test_meta_device_leaves_no_real_tensors(tmp_path):
    _, path = llama_config(tmp_path, tied=True)
    before = torch.empty(0).device
    model_shape(str(path), lora_r=4)
    assert torch.empty(0).device == before  # the meta device context did not leak


def test_a_reference_free_loss_plans_no_reference_copy_and_no_reference_pass(shape):
    live = PlanSettings(gpus=1, reference_cache="off")
    assert make_plan(shape, live).parts["reference"] > 0
    simpo = make_plan(shape, replace(live, loss="simpo"))
    assert simpo.parts["reference"] == 0 and simpo.reference_pass_flops == 0
    # one forward fewer per step than the live reference: fwd + bwd (3 passes) instead of 4
    assert simpo.step_flops == pytest.approx(make_plan(shape, live).step_flops * 3 / 4)
    cached = make_plan(shape, PlanSettings(gpus=1, loss="orpo"))
    assert cached.reference_pass_flops == 0 and cached.parts["reference"] == 0
    assert make_plan(shape, PlanSettings(gpus=1)).reference_pass_flops > 0
    with pytest.raises(UserError, match="unknown loss"):
        make_plan(shape, PlanSettings(gpus=1, loss="simpo,nope"))
