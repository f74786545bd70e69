"""Judge specs and the win rate, without sampling."""
import pytest
import torch

from dpokit.errors import UserError
from dpokit.eval.generation import prompt_win_rates, win_rate
from dpokit.judges import Sample, load_judge


def samples():
    return [Sample("Hi", "hello there", (1, 2), (3, 4)), Sample([{"role": "user", "content": "Why?"}], "because", (1,), (5,))]


def test_win_rate_counts_ties_as_half():
    assert win_rate([2, 0], [1, 1], k=2) == 0.5
    assert win_rate([3, 3, 0, 0], [1, 1, 1, 1], k=2) == 0.5  # prompt 1 all wins, prompt 2 all losses
    assert win_rate([1, 1], [1, 1], k=1) == 0.5
    assert win_rate([2, 2], [1, 1], k=2) == 1.0


def test_win_rate_per_prompt_is_what_its_interval_resamples():
    assert prompt_win_rates([3, 3, 0, 0], [1, 1, 1, 1], k=2) == [1.0, 0.0]
    assert prompt_win_rates([2, 0, 1], [1, 1, 1], k=1) == [1.0, 0.0, 0.5]
    assert prompt_win_rates([2, 0], [1, 3], k=2) == [0.25]  # 2>1 wins; 2<3, 0<1, 0<3 lose


def test_python_judge_from_a_file_is_called_with_prompts_and_responses(tmp_path):
    path = tmp_path / "r.py"
    path.write_text("SEEN = []\ndef f(prompts, responses):\n    SEEN.append((prompts, responses))\n"
                    "    return [len(r) for r in responses]\n")
    reward = load_judge(f"py:{path}:f")
    assert reward(samples()) == [11.0, 7.0]
    assert reward.fn.__globals__["SEEN"] == [(["Hi", "user: Why?"], ["hello there", "because"])]


@pytest.mark.parametrize("spec", ["py:nosuchmodule_xyz:f", "py:os:nosuchfunction", "py:nocolon", "hf:/no/such/dir",
                                  "bogus", "implicit", "human:project", "llm:/no/such/dir"])
def test_bad_judge_specs_are_user_errors(spec):
    with pytest.raises(UserError):
        load_judge(spec)


def test_judge_returning_wrong_count_is_a_user_error(tmp_path):
    path = tmp_path / "r.py"
    path.write_text("def f(prompts, responses):\n    return [1.0]\n")
    with pytest.raises(UserError, match="returned 1 scores for 2 responses"):
        load_judge(f"py:{path}:f")(samples())


def test_hf_classifier_judge_is_logit1_minus_logit0(tmp_path, tiny_tokenizer):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tiny_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=2,
                         pad_token_id=tiny_tokenizer.pad_token_id)
    model = LlamaForSequenceClassification(config).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    tiny_tokenizer.save_pretrained(tmp_path)
    values = load_judge(f"hf:{tmp_path}")(samples())
    text = tiny_tokenizer.apply_chat_template([{"role": "user", "content": "Hi"},
                                               {"role": "assistant", "content": "hello there"}], tokenize=False)
    with torch.no_grad():
        logits = model(**tiny_tokenizer(text, return_tensors="pt")).logits[0]
    assert values[0] == pytest.approx(float(logits[1] - logits[0]), abs=1e-5)
    assert values[0] != values[1]


def test_a_judge_that_fails_or_returns_nan_names_itself_and_the_prompt(tmp_path):
    path = tmp_path / "r.py"
    path.write_text("def nan(prompts, responses):\n    return [0.0, float('nan')]\n"
                    "def boom(prompts, responses):\n    raise RuntimeError('model server down')\n")
    with pytest.raises(UserError, match=r"judge py:.*:nan returned nan for a response to prompt 'user: Why\?'"):
        load_judge(f"py:{path}:nan")(samples())
    with pytest.raises(UserError, match=r"judge py:.*:boom failed on prompt 'Hi': RuntimeError: model server down"):
        load_judge(f"py:{path}:boom")(samples())


class RiggedJudge:
    """A stand-in judge model: says "A" with log-probability from `prefer(a, b)`, read off the rendered prompt."""

    def __init__(self, prefer):
        self.prefer = prefer

    def choice_logprobs(self, texts, words):
        import re

        rows = []
        for text in texts:
            a = re.search(r"Assistant A's Answer\]\n(.*)\n\[The End of Assistant A", text, re.S).group(1)
            b = re.search(r"Assistant B's Answer\]\n(.*)\n\[The End of Assistant B", text, re.S).group(1)
            rows.append([0.0, -1.0] if self.prefer(a, b) else [-1.0, 0.0])
        return torch.tensor(rows)


def test_pairwise_judge_asks_both_orders_and_a_position_bias_is_a_tie():
    from dpokit.judges.llm import PairwiseJudge

    group = [Sample("Q", text, (1,), (2,)) for text in ("short", "a longer answer", "the longest answer of all")]
    by_length = PairwiseJudge(RiggedJudge(lambda a, b: len(a) > len(b)), "llm:rigged")(group)
    assert by_length == [0.0, 0.5, 1.0]  # wins in both orders: the longest beats both others
    always_a = PairwiseJudge(RiggedJudge(lambda a, b: True), "llm:rigged")(group)
    assert always_a == [0.5, 0.5, 0.5]  # "A" whatever A is: every verdict flips with the order, so every one a tie
    other = Sample("Another prompt", "x", (1,), (2,))  # compared only with samples of its own prompt: none
    assert PairwiseJudge(RiggedJudge(lambda a, b: True), "llm:rigged")(group + [other])[-1] == 0.5


def test_local_llm_judges_run_on_a_tiny_model(tiny_model_dir):
    pairwise = load_judge(f"llm:{tiny_model_dir}")
    rubric = load_judge(f"llm-rubric:{tiny_model_dir}")
    group = [Sample("Is the sky blue?", text, (1,), (2,)) for text in ("Yes.", "No, it is green.", "Maybe")]
    scores = pairwise(group)
    assert all(0 <= s <= 1 for s in scores) and sum(scores) == pytest.approx(1.5)  # each comparison gives out 1 point
    expected = rubric(group)
    assert all(0 <= s <= 5 for s in expected) and len(set(expected)) == 3  # a different expectation per answer
