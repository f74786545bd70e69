"""`dpokit eval`, `dpokit eval --generate`, `dpokit score` and `generate --best-of` on tiny random models."""
import json
import shutil

import pytest
import torch

from dpokit.cli import main
from dpokit.data.tokenize import tokenize_pairs
from dpokit.data.validate import load_pairs
from tiny import ASSETS, make_adapter_dir

MAXLEN = ["--max-length", 96, "--max-prompt-length", 48]


def run(*args) -> int:
    return main([str(a) for a in args])


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().rstrip("\n").split("\n")]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    import gzip

    with gzip.open(ASSETS / "hh_rlhf_harmless_sample.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(16), f)]
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def ref_copy(tiny_model_dir, tmp_path_factory):
    """The tiny model again, in another folder: loaded separately, so policy = reference is tested on real loads."""
    path = tmp_path_factory.mktemp("copy") / "model"
    shutil.copytree(tiny_model_dir, path)
    return path


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter on the tiny model with non-zero B matrices, so it changes every log-prob."""
    return make_adapter_dir(tiny_model_dir, tmp_path_factory.mktemp("adapter"))


def naive_logps(model, prompt_ids, completion_ids) -> float:
    """The obvious computation: full logits, log-softmax, gather, sum over the completion."""
    ids = torch.tensor([list(prompt_ids) + list(completion_ids)])
    logp = model(ids).logits[0].float().log_softmax(-1)  # (T, V)
    n = len(prompt_ids)
    return float(sum(logp[n - 1 + j, t] for j, t in enumerate(completion_ids)))


# ---- preference eval ------------------------------------------------------------------------------------------------

def test_policy_equal_to_reference_gives_accuracy_0_margins_0_loss_ln2(tiny_model_dir, ref_copy, pairs_file, tmp_path):
    out = tmp_path / "eval"
    assert run("eval", "--model", tiny_model_dir, "--ref", ref_copy, "--data", pairs_file, "--out", out, *MAXLEN) == 0
    rows = read_jsonl(out / "pairs.jsonl")
    summary = json.loads((out / "summary.json").read_text())
    assert len(rows) == summary["pairs"] == 16
    assert all(r["margin"] == 0.0 and r["chosen_reward"] == 0.0 and not r["correct"] for r in rows)
    assert summary["rewards/accuracies"] == 0.0 and summary["loss"] == pytest.approx(0.6931471805599453)
    assert rows[3]["origin"] == "pairs.jsonl:4"
    assert {"model", "ref", "data", "delta_logps/chosen", "rewards/chosen"} <= set(summary)
    # never overwritten without --overwrite
    assert run("eval", "--model", tiny_model_dir, "--ref", ref_copy, "--data", pairs_file, "--out", out) == 2


def test_lora_adapter_eval_equals_the_obvious_computation(tiny_model_dir, adapter_dir, pairs_file, tiny_tokenizer,
                                                          tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = tmp_path / "eval"
    assert run("eval", "--model", adapter_dir, "--ref", tiny_model_dir, "--data", pairs_file, "--out", out,
               "--beta", 0.5, "--layout", "padded", *MAXLEN) == 0
    rows = read_jsonl(out / "pairs.jsonl")
    pairs = tokenize_pairs(tiny_tokenizer, load_pairs(pairs_file).pairs, max_length=96, max_prompt_length=48,
                           skip_invalid=False, chat=True).pairs  # the template, as eval uses it by default
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    policy = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), str(adapter_dir))
    policy = policy.merge_and_unload().eval()
    correct = 0
    with torch.no_grad():
        for pair, row in zip(pairs, rows):
            dc = (naive_logps(policy, pair.prompt_ids, pair.chosen_ids)
                  - naive_logps(base, pair.prompt_ids, pair.chosen_ids))
            dr = (naive_logps(policy, pair.prompt_ids, pair.rejected_ids)
                  - naive_logps(base, pair.prompt_ids, pair.rejected_ids))
            assert row["chosen_reward"] == pytest.approx(0.5 * dc, abs=2e-4)
            assert row["rejected_reward"] == pytest.approx(0.5 * dr, abs=2e-4)
            assert row["loss"] == pytest.approx(float(-torch.nn.functional.logsigmoid(torch.tensor(0.5 * (dc - dr)))),
                                                abs=2e-4)
            correct += dc > dr
    summary = json.loads((out / "summary.json").read_text())
    assert 0 < correct < len(rows)  # a case where accuracy is neither trivially 0 nor 1
    assert summary["rewards/accuracies"] == correct / len(rows)


def test_bad_data_exits_2_naming_file_and_line(tiny_model_dir, tmp_path, capsys):
    good = json.dumps({"prompt": "Hi", "chosen": " yes", "rejected": " no"})
    bad = tmp_path / "bad.jsonl"
    bad.write_text(good + "\n" + good.replace("}", "") + "\n")
    assert run("eval", "--model", tiny_model_dir, "--ref", tiny_model_dir, "--data", bad, "--out", tmp_path / "o") == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("dpokit: error:")]
    assert len(err) == 1 and "bad.jsonl:2" in err[0]
    assert run("eval", "--model", tiny_model_dir, "--data", bad) == 2  # no --ref and not a run folder
    assert "--ref" in capsys.readouterr().err


def test_heldout_split_reproduces_the_runs_eval_pairs(tiny_model_dir, pairs_file, tmp_path):
    run_dir = tmp_path / "run"
    assert run("dpo", "--model", tiny_model_dir, "--data", pairs_file, "--output", run_dir, "--max-steps", 1,
               "--batch-size", 4, "--eval-fraction", 0.25, "--seed", 3, "--learning-rate", 1e-3, *MAXLEN) == 0
    trained = json.loads((run_dir / "summary.json").read_text())
    assert run("eval", "--model", run_dir, "--split", "heldout") == 0
    summary = json.loads((run_dir / "eval-heldout" / "summary.json").read_text())
    assert summary["pairs"] == trained["pairs"]["eval"] == 4
    assert summary["ref"] == str(tiny_model_dir) and summary["model"] == str(run_dir / "final")
    assert summary["beta"] == 0.1 and "heldout" in summary["data"]
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().rstrip("\n").split("\n")]
    end = [m for m in metrics if "eval/loss" in m][-1]  # the run's own held-out numbers after its last step
    assert summary["loss"] == pytest.approx(end["eval/loss"], abs=1e-4)
    assert summary["rewards/accuracies"] == pytest.approx(end["eval/rewards/accuracies"])
    # generation eval on the held-out prompts, against the run's reference
    assert run("eval", "--generate", "--model", run_dir, "--split", "heldout", "--k", 1, "--max-new-tokens", 3) == 0
    generated = json.loads((run_dir / "eval-generate" / "summary.json").read_text())
    held_prompts = {r["prompt"] for r in read_jsonl(run_dir / "eval-generate" / "samples.jsonl")}
    assert generated["prompts"] == len(held_prompts) and 1 <= len(held_prompts) <= 4
    assert "heldout" in generated["prompts_from"] and generated["ref"] == str(tiny_model_dir)


# ---- generation eval ------------------------------------------------------------------------------------------------

def test_generation_policy_equal_to_reference_kl_0_win_rate_half(tiny_model_dir, ref_copy, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello there\nWhat is a cat?\n")
    out = tmp_path / "gen"
    assert run("eval", "--generate", "--model", tiny_model_dir, "--ref", ref_copy, "--prompts", prompts, "--k", 3,
               "--max-new-tokens", 6, "--out", out) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kl"] == 0.0 and summary["win_rate"] == 0.5
    assert summary["reward/policy"] == summary["reward/reference"] == 0.0
    rows = read_jsonl(out / "samples.jsonl")
    assert len(rows) == 2 * 2 * 3 and {r["source"] for r in rows} == {"policy", "reference"}
    assert summary["length/policy"] == sum(r["tokens"] for r in rows if r["source"] == "policy") / 6


def test_generation_with_python_reward_and_adapter_policy(tiny_model_dir, adapter_dir, tmp_path, monkeypatch):
    module = tmp_path / "my_rewards.py"
    module.write_text("CALLS = []\n"
                      "def length(prompts, responses):\n"
                      "    CALLS.append(len(responses))\n"
                      "    return [float(len(r)) for r in responses]\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "gen"
    assert run("eval", "--generate", "--model", adapter_dir, "--ref", tiny_model_dir, "--prompts", _prompts(tmp_path),
               "--k", 2, "--max-new-tokens", 5, "--reward", "py:my_rewards:length", "--out", out) == 0
    import my_rewards

    assert my_rewards.CALLS == [4, 4]  # policy samples, then reference samples
    rows = read_jsonl(out / "samples.jsonl")
    assert all(r["reward"] == len(r["response"]) for r in rows)
    summary = json.loads((out / "summary.json").read_text())
    policy_rows = [r for r in rows if r["source"] == "policy"]
    kl = sum(r["logps"] - r["reference_logps"] for r in policy_rows) / len(policy_rows)
    assert summary["kl"] == pytest.approx(kl, abs=1e-5) and summary["kl"] != 0
    wins = []
    for p in range(2):
        mine = [r["reward"] for r in policy_rows if r["prompt_index"] == p]
        theirs = [r["reward"] for r in rows if r["source"] == "reference" and r["prompt_index"] == p]
        wins += [1.0 if a > b else 0.5 if a == b else 0.0 for a in mine for b in theirs]
    assert summary["win_rate"] == pytest.approx(sum(wins) / len(wins))


def _prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"prompt": "Tell me a joke"}) + "\n"
                    + json.dumps({"prompt": [{"role": "user", "content": "Why?"}]}) + "\n")
    return path


# ---- score and best-of ----------------------------------------------------------------------------------------------

def test_score_ranks_candidates_by_the_implicit_reward_computed_naively(tiny_model_dir, adapter_dir, tiny_tokenizer,
                                                                       tmp_path):
    """Each candidate's log π and log π_ref equal the full-logits computation of naive_logps, its reward is
    β × their difference, and the rows come best first. (Which candidate wins depends on the adapter's random
    draw; an earlier version asserted the adapter's own greedy text wins, which held for one draw only.)"""
    from transformers import AutoModelForCausalLM

    from dpokit.data.tokenize import tokenize_pairs
    from dpokit.models import load_model
    from dpokit.types import PreferencePair

    prompt = "Human: how do I bake bread?\n\nAssistant:"
    policy = load_model(adapter_dir, train=False)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = tiny_tokenizer(prompt, return_tensors="pt")["input_ids"]
    own = lambda m: tiny_tokenizer.decode(m.generate(ids, max_new_tokens=12, min_new_tokens=12, do_sample=False,  # noqa
                                                     pad_token_id=0)[0, ids.shape[1]:])
    texts = [t for t in (own(base), own(policy), " the the the") if t.strip()]
    candidates = tmp_path / "c.txt"
    candidates.write_text("".join(t.replace("\n", " ") + "\n" for t in texts))
    out = tmp_path / "scores.jsonl"
    assert run("score", "--model", adapter_dir, "--ref", tiny_model_dir, "--prompt", prompt, "--candidates",
               candidates, "--out", out) == 0
    rows = read_jsonl(out)
    assert [r["rank"] for r in rows] == list(range(1, len(texts) + 1))
    assert [r["reward"] for r in rows] == sorted((r["reward"] for r in rows), reverse=True)
    assert len({round(r["reward"], 6) for r in rows}) == len(rows)  # a real ranking, no ties
    tokenized = {p.origin: p for p in tokenize_pairs(
        tiny_tokenizer, [PreferencePair(prompt, r["candidate"], r["candidate"], r["origin"]) for r in rows],
        max_length=512, max_prompt_length=None, skip_invalid=False, chat=True).pairs}
    with torch.no_grad():
        for r in rows:
            pair = tokenized[r["origin"]]
            assert r["logps"] == pytest.approx(naive_logps(policy, pair.prompt_ids, pair.chosen_ids), abs=2e-4)
            assert r["reference_logps"] == pytest.approx(naive_logps(base, pair.prompt_ids, pair.chosen_ids), abs=2e-4)
            assert r["reward"] == pytest.approx(0.1 * (r["logps"] - r["reference_logps"]))


def test_score_candidates_jsonl_ranks_each_prompt_on_its_own(tiny_model_dir, tmp_path):
    rows_in = tmp_path / "rows.jsonl"
    rows_in.write_text(json.dumps({"prompt": "Hi", "candidates": [" a", " b"]}) + "\n"
                       + json.dumps({"prompt": [{"role": "user", "content": "Why?"}], "candidates": ["c", "d", "e"]})
                       + "\n")
    out = tmp_path / "s.jsonl"
    assert run("score", "--model", tiny_model_dir, "--ref", tiny_model_dir, "--candidates-jsonl", rows_in,
               "--out", out) == 0
    rows = read_jsonl(out)
    assert [r["rank"] for r in rows] == [1, 2, 1, 2, 3] and all(r["reward"] == 0.0 for r in rows)
    assert [r["candidate"] for r in rows] == [" a", " b", "c", "d", "e"]  # ties keep file order
    assert run("score", "--model", tiny_model_dir, "--ref", tiny_model_dir, "--candidates-jsonl", rows_in,
               "--out", out) == 2  # never overwritten without --overwrite


def test_best_of_keeps_the_highest_scored_sample(tiny_model_dir, adapter_dir, tmp_path):
    out = tmp_path / "best.jsonl"
    assert run("generate", "--model", adapter_dir, "--prompts", _prompts(tmp_path), "--out", out, "--best-of", 3,
               "--judge-ref", tiny_model_dir, "--max-new-tokens", 5, "--temperature", 1.0) == 0
    rows = read_jsonl(out)
    assert len(rows) == 2
    for row in rows:
        assert len(row["scores"]) == len(row["candidates"]) == 3
        assert row["best_index"] == row["scores"].index(max(row["scores"]))
        assert row["completion"] == row["candidates"][row["best_index"]]
    assert run("generate", "--model", adapter_dir, "--prompts", _prompts(tmp_path), "--out", tmp_path / "x.jsonl",
               "--best-of", 2) == 2  # implicit reward needs --judge-ref for a plain model folder
