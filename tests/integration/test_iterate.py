"""`dpokit iterate` on the tiny model with a `py:` judge that rewards one word: the word's share in held-out samples
rises over two rounds; killed while sampling, while judging (in two places) or while training, a resumed run asks no
judgment twice and ends with the weights of an uninterrupted run."""
import gzip
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dpokit.cli import main

ASSETS = Path(__file__).resolve().parents[2] / "src" / "dpokit" / "assets"
# The judge counts its finished calls in a file and logs what it judged; KILL_AT_CALL=n makes call n kill its own
# process with SIGKILL before it answers (a kill -9 while judging).
JUDGE = '''
import json, os, signal
from pathlib import Path

def the(prompts, responses):
    state = Path(os.environ["JUDGE_STATE"])
    calls = int(state.read_text()) if state.is_file() else 0
    if os.environ.get("KILL_AT_CALL") == str(calls + 1):
        os.kill(os.getpid(), signal.SIGKILL)
    with open(state.with_suffix(".log"), "a") as f:
        for p, r in zip(prompts, responses):
            f.write(json.dumps([p, r]) + "\\n")
    state.write_text(str(calls + 1))
    return [float(r.lower().count("the")) for r in responses]
'''
SETTINGS = ["--rounds", "2", "--samples-per-prompt", "8", "--prompts-per-round", "40", "--eval-prompts", "16",
            "--eval-samples", "4", "--max-new-tokens", "16", "--learning-rate", "5e-3", "--batch-size", "8",
            "--max-steps", "30", "--save-every", "5", "--max-length", "256", "--max-prompt-length", "128",
            "--allow-truncated-chosen"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("iterate")
    with gzip.open(ASSETS / "hh_rlhf_harmless_sample.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for _, line in zip(range(60), f)]
    prompts = folder / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": r["chosen"].split("\n\nAssistant:")[0][-200:]}) + "\n"
                               for r in rows))
    (folder / "judge.py").write_text(JUDGE)
    return prompts, folder / "judge.py"


def args(model_dir, inputs, out, *extra):
    prompts, judge = inputs
    return ["iterate", "--model", str(model_dir), "--prompts", str(prompts), "--judge", f"py:{judge}:the",
            "--output", str(out), *SETTINGS, *extra]


def share_with_the(run: Path, round_index: int) -> float:
    rows = [json.loads(line) for line in (run / f"round-{round_index}" / "eval.jsonl").read_text().rstrip("\n").split("\n")]
    return sum("the" in r["response"].lower() for r in rows) / len(rows)


def test_the_rewarded_word_spreads_over_two_rounds(tiny_model_dir, inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_STATE", str(tmp_path / "judge.state"))
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(args(tiny_model_dir, inputs, run)) == 0
    shares = [share_with_the(run, r) for r in range(3)]
    assert shares[2] > shares[0] and shares[2] >= 2 * shares[0], shares
    rounds = [json.loads(line) for line in (run / "rounds.jsonl").read_text().rstrip("\n").split("\n")]
    assert [r["round"] for r in rounds] == [0, 1, 2] and rounds[2]["reward"] > rounds[0]["reward"]
    assert rounds[2]["win_rate/start"] > 0.5 and rounds[1]["kl"] > 0
    pairs = [json.loads(line) for line in (run / "round-1" / "pairs.jsonl").read_text().rstrip("\n").split("\n")]
    assert len(pairs) == rounds[1]["pairs"] > 0 and all(p["chosen"] != p["rejected"] for p in pairs)
    # the tiny tokenizer has a chat template: text prompts were sampled as one user message, and train as one
    text = lambda answer: answer[0]["content"].lower()  # noqa: E731
    assert all(p["prompt"][0]["role"] == "user" and len(p["prompt"]) == 1 for p in pairs)
    assert all(text(p["chosen"]).count("the") > text(p["rejected"]).count("the") for p in pairs)
    assert (run / "report.png").is_file() and (run / "round-2" / "train" / "final" / "model.safetensors").is_file()
    page = (run / "report.html").read_text()
    assert page.count("<tr>") == 4 and 'id="rounds"' in page and "data:image/png;base64," in page  # head + 3 rounds
    # the round's pairs train with dpokit dpo unchanged
    assert main(["validate", str(run / "round-1" / "pairs.jsonl"), "--no-tokens"]) == 0


def run_cli(argv, env):
    return subprocess.run([sys.executable, "-m", "dpokit", *argv], env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, inputs, tmp_path_factory):
    """The two-round run the killed ones must equal: its folder and its judge's state (calls; .log: what it judged)."""
    folder = tmp_path_factory.mktemp("whole")
    env = {**os.environ, "DPOKIT_CACHE": str(folder / "cache"), "JUDGE_STATE": str(folder / "a.state")}
    assert run_cli(args(tiny_model_dir, inputs, folder / "run"), env).returncode == 0
    return folder / "run", folder / "a.state"


def judged(state: Path) -> Counter:
    """Every (prompt, response) the judge was asked about, with how often."""
    return Counter(map(tuple, (json.loads(x) for x in state.with_suffix(".log").read_text().rstrip("\n").split("\n"))))


def assert_equal_runs(killed: Path, killed_state: Path, whole: Path, whole_state: Path) -> None:
    """Every sample judged once (none lost, none asked twice, in as many calls), the same final weights and the same
    held-out figures round by round."""
    assert judged(killed_state) == judged(whole_state)
    assert killed_state.read_text() == whole_state.read_text()
    a = load_file(whole / "round-2" / "train" / "final" / "model.safetensors")
    b = load_file(killed / "round-2" / "train" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    read = lambda p: [{k: v for k, v in json.loads(x).items() if k != "seconds"}  # noqa: E731
                      for x in (p / "rounds.jsonl").read_text().rstrip("\n").split("\n")]
    assert read(killed) == read(whole)


@pytest.mark.slow
def test_killed_while_judging_resumes_without_judging_twice_and_ends_equal(tiny_model_dir, inputs, uninterrupted,
                                                                          tmp_path):
    env = {**os.environ, "DPOKIT_CACHE": str(tmp_path / "cache")}
    killed = tmp_path / "killed"
    state = {**env, "JUDGE_STATE": str(tmp_path / "b.state")}
    # call 8: round 1's held-out evaluation, after its training; call 12: in the middle of round 2's judging
    first = run_cli(args(tiny_model_dir, inputs, killed), {**state, "KILL_AT_CALL": "8"})
    assert first.returncode == -9, first.stderr[-2000:]
    second = run_cli(args(tiny_model_dir, inputs, killed, "--resume"), {**state, "KILL_AT_CALL": "12"})
    assert second.returncode == -9, second.stderr[-2000:]
    third = run_cli(args(tiny_model_dir, inputs, killed, "--resume"), state)
    assert third.returncode == 0, third.stderr[-2000:]
    assert_equal_runs(killed, tmp_path / "b.state", *uninterrupted)


# Runs `python -m dpokit ARGS` with one change: while a round samples its training responses (make_round_pairs),
# the KILL_AT_SAMPLE_BATCH-th batch handed to the model (counted in this process) SIGKILLs the process from inside
# `generate`, after writing where it was. Held-out sampling and judging are not counted.
SAMPLING_KILLER = '''
import json, os, runpy, signal, sys
from pathlib import Path

import dpokit.generate
from dpokit.train import iterate

batches, where = 0, {}
real_encode, real_make_round_pairs = dpokit.generate.encode, iterate.Iteration.make_round_pairs

def make_round_pairs(self, policy, r):
    where["round"] = self.run_dir / f"round-{r}"
    try:
        return real_make_round_pairs(self, policy, r)
    finally:
        where.clear()

def encode(*a, **k):
    global batches
    if where:
        batches += 1
        if batches == int(os.environ["KILL_AT_SAMPLE_BATCH"]):
            state = {"round": where["round"].name, "batch": batches,
                     "samples_written": (where["round"] / "samples.jsonl").exists(),
                     "judged": (where["round"] / "judgments.jsonl").exists()}
            Path(os.environ["KILL_LOG"]).write_text(json.dumps(state))
            os.kill(os.getpid(), signal.SIGKILL)
    return real_encode(*a, **k)

iterate.Iteration.make_round_pairs, dpokit.generate.encode = make_round_pairs, encode
sys.argv = ["dpokit", *sys.argv[1:]]
runpy.run_module("dpokit", run_name="__main__")
'''


@pytest.mark.slow
def test_killed_while_sampling_resumes_with_the_same_samples_and_ends_equal(tiny_model_dir, inputs, uninterrupted,
                                                                           tmp_path):
    killer = tmp_path / "killer.py"
    killer.write_text(SAMPLING_KILLER)
    env = {**os.environ, "DPOKIT_CACHE": str(tmp_path / "cache"), "JUDGE_STATE": str(tmp_path / "b.state"),
           "KILL_LOG": str(tmp_path / "kill.json")}
    killed = tmp_path / "killed"

    def killed_run(batch: int, *extra) -> dict:
        done = subprocess.run([sys.executable, str(killer), *args(tiny_model_dir, inputs, killed, *extra)],
                              env={**env, "KILL_AT_SAMPLE_BATCH": str(batch)}, capture_output=True, text=True)
        assert done.returncode == -9, done.stderr[-2000:]
        return json.loads((tmp_path / "kill.json").read_text())

    # 40 prompts × 8 samples, 64 sequences (8 prompts) a generate call: 5 batches a round. Batch 3: round 1's
    # sampling; resumed, round 1 is sampled again (5 batches) and batch 8 is the 3rd of round 2's
    assert killed_run(3) == {"round": "round-1", "batch": 3, "samples_written": False, "judged": False}
    assert killed_run(8, "--resume") == {"round": "round-2", "batch": 8, "samples_written": False, "judged": False}
    third = run_cli(args(tiny_model_dir, inputs, killed, "--resume"), env)
    assert third.returncode == 0, third.stderr[-2000:]
    whole, whole_state = uninterrupted
    for r in (1, 2):  # drawn again from the round's seed: the very samples of the uninterrupted run
        samples = lambda run: (run / f"round-{r}" / "samples.jsonl").read_text()  # noqa: E731
        assert samples(killed) == samples(whole)
    assert_equal_runs(killed, tmp_path / "b.state", whole, whole_state)


def test_implicit_judge_needs_its_reference_and_moves_with_the_policy(tiny_model_dir, inputs, tmp_path, monkeypatch,
                                                                      capsys):
    import sys as _sys

    _sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tiny import make_model_dir

    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path / "cache"))
    prompts, _ = inputs
    base = ["iterate", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--rounds", "1",
            "--samples-per-prompt", "4", "--prompts-per-round", "16", "--eval-prompts", "4", "--max-new-tokens", "8",
            "--batch-size", "4", "--max-steps", "2", "--learning-rate", "1e-3", "--allow-truncated-chosen"]
    assert main([*base, "--judge", "implicit", "--output", str(tmp_path / "a")]) == 2
    assert "implicit:DIR" in capsys.readouterr().err
    other = make_model_dir(tmp_path / "other", seed=1)  # another model: the policy's reward against it is not 0
    assert main([*base, "--judge", f"implicit:{other}", "--output", str(tmp_path / "b")]) == 0
    rounds = [json.loads(line) for line in (tmp_path / "b" / "rounds.jsonl").read_text().rstrip("\n").split("\n")]
    assert rounds[1]["pairs"] > 0 and rounds[0]["reward"] != 0


@pytest.mark.slow
def test_killed_while_training_resumes_from_its_checkpoint_and_ends_equal(tiny_model_dir, inputs, tmp_path):
    import signal
    import time

    env = {**os.environ, "DPOKIT_CACHE": str(tmp_path / "cache"), "JUDGE_STATE": str(tmp_path / "j.state")}
    one_round = ["--rounds", "1", "--max-steps", "60", "--save-every", "5"]
    whole = tmp_path / "whole"
    assert run_cli(args(tiny_model_dir, inputs, whole, *one_round), env).returncode == 0

    killed = tmp_path / "killed"
    train = killed / "round-1" / "train"
    process = subprocess.Popen([sys.executable, "-m", "dpokit", *args(tiny_model_dir, inputs, killed, *one_round)],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (train / "checkpoint-10").is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (train / "final").exists(), "the kill came after training ended: nothing was tested"
    resumed = run_cli(args(tiny_model_dir, inputs, killed, *one_round, "--resume"), env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    metrics = [json.loads(x)["step"] for x in (train / "metrics.jsonl").read_text().rstrip("\n").split("\n")]
    assert metrics == sorted(set(metrics)) and metrics[-1] == 60  # continued, nothing logged twice
    a = load_file(whole / "round-1" / "train" / "final" / "model.safetensors")
    b = load_file(train / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
