"""Reward specs and the win rate, without sampling."""
import pytest
import torch

from dpokit.errors import UserError
from dpokit.eval.generation import win_rate
from dpokit.eval.rewards import Sample, load_reward


def samples():
    return [Sample("Hi", "hello there", (1, 2), (3, 4)), Sample([{"role": "user", "content": "Why?"}], "because", (1,), (5,))]


def test_win_rate_counts_ties_as_half():
    assert win_rate([2, 0], [1, 1], k=2) == 0.5
    assert win_rate([3, 3, 0, 0], [1, 1, 1, 1], k=2) == 0.5  # prompt 1 all wins, prompt 2 all losses
    assert win_rate([1, 1], [1, 1], k=1) == 0.5
    assert win_rate([2, 2], [1, 1], k=2) == 1.0


def test_python_reward_from_a_file_is_called_with_prompts_and_responses(tmp_path):
    path = tmp_path / "r.py"
    path.write_text("SEEN = []\ndef f(prompts, responses):\n    SEEN.append((prompts, responses))\n"
                    "    return [len(r) for r in responses]\n")
    reward = load_reward(f"py:{path}:f")
    assert reward(samples()) == [11.0, 7.0]
    assert reward.fn.__globals__["SEEN"] == [(["Hi", "user: Why?"], ["hello there", "because"])]


@pytest.mark.parametrize("spec", ["py:nosuchmodule_xyz:f", "py:os:nosuchfunction", "py:nocolon", "hf:/no/such/dir",
                                  "bogus", "implicit"])
def test_bad_reward_specs_are_user_errors(spec):
    with pytest.raises(UserError):
        load_reward(spec)


def test_reward_returning_wrong_count_is_a_user_error(tmp_path):
    path = tmp_path / "r.py"
    path.write_text("def f(prompts, responses):\n    return [1.0]\n")
    with pytest.raises(UserError, match="1 values for 2"):
        load_reward(f"py:{path}:f")(samples())


def test_hf_classifier_reward_is_logit1_minus_logit0(tmp_path, tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=2,
                         pad_token_id=tiny_tokenizer.pad_token_id)
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    tiny_tokenizer.save_pretrained(tmp_path)
    values = load_reward(f"hf:{tmp_path}")(samples())
    text = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "Hi"},
                                               {"role": "assistant", "content": "hello there"}], tokenize=False)
    with torch.no_grad():
        logits = model(**tiny_tokenizer(text, return_tensors="pt")).logits[0]
    assert values[0] == pytest.approx(float(logits[1] - logits[0]), abs=1e-5)
    assert values[0] != values[1]
