"""`dpokit iterate --online` (OAIF: a judged batch per optimizer step) on the tiny model with the `py:` judge that
rewards one word: the word's share in held-out samples rises; killed while sampling and while judging, a resumed run
asks no judgment twice and ends with the weights of an uninterrupted run; meaningless settings are refused."""
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from safetensors.torch import load_file

from dpokit.cli import main

import test_iterate
from test_iterate import run_cli

inputs = test_iterate.inputs  # the fixture: 60 hh-rlhf prompts (16 held out) and the judge that counts its calls

STEPS = 40
SETTINGS = ["--online", "--max-steps", str(STEPS), "--prompts-per-round", "8", "--samples-per-prompt", "4",
            "--batch-size", "8", "--eval-every", "20", "--eval-prompts", "16", "--eval-samples", "4",
            "--max-new-tokens", "16", "--learning-rate", "5e-3", "--save-every", "5", "--max-length", "256",
            "--max-prompt-length", "128", "--allow-truncated-chosen", "--sample-batch-size", "16"]


def args(model_dir, inputs, out, *extra):
    prompts, judge = inputs
    return ["iterate", "--model", str(model_dir), "--prompts", str(prompts), "--judge", f"py:{judge}:the",
            "--output", str(out), *SETTINGS, *extra]


def lines(path: Path) -> list[dict]:
    # split at "\n" only: str.splitlines also splits inside a sampled answer holding U+2028, U+0085 and the like
    return [json.loads(x) for x in path.read_text().rstrip("\n").split("\n")]


def share_with_the(run: Path, r: int) -> float:
    rows = lines(run / f"eval-{r}" / "eval.jsonl")
    return sum("the" in row["response"].lower() for row in rows) / len(rows)


def test_online_steps_spread_the_rewarded_word(tiny_model_dir, inputs, tmp_path, monkeypatch):
    monkeypatch.setenv("JUDGE_STATE", str(tmp_path / "judge.state"))
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    assert main(args(tiny_model_dir, inputs, run)) == 0
    evaluations = lines(run / "rounds.jsonl")
    assert [e["step"] for e in evaluations] == [0, 20, 40] and [e["round"] for e in evaluations] == [0, 1, 2]
    shares = [share_with_the(run, r) for r in range(3)]
    assert shares[2] > shares[0] and shares[2] >= 2 * shares[0], shares
    assert evaluations[2]["reward"] > evaluations[0]["reward"] and evaluations[2]["win_rate/start"] > 0.5
    assert evaluations[2]["sample_reward"] > evaluations[1]["sample_reward"]  # the training samples improve too
    # one optimizer step per judged batch, every one on pairs drawn at that step
    metrics = lines(run / "train" / "metrics.jsonl")
    assert [m["step"] for m in metrics] == list(range(1, STEPS + 1))
    pairs = lines(run / "pairs.jsonl")
    trained = [p for p in pairs if p["trained"]]
    assert Counter(p["step"] for p in trained) == {s: 8 for s in range(STEPS)}
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    text = lambda answer: answer[0]["content"].lower()  # noqa: E731
    assert all(text(p["chosen"]).count("the") > text(p["rejected"]).count("the") for p in pairs)
    samples = lines(run / "samples.jsonl")
    judgments = lines(run / "judgments.jsonl")
    assert len(judgments) == len(samples) == len({(s["step"], s["draw"]) for s in samples}) * 8 * 4
    assert (run / "train" / "final" / "model.safetensors").is_file() and (run / "report.png").is_file()
    page = (run / "report.html").read_text()
    assert page.count("<tr>") == 4 and 'id="rounds"' in page
    # the pairs train with dpokit dpo unchanged
    assert main(["validate", str(run / "pairs.jsonl"), "--no-tokens"]) == 0


@pytest.mark.parametrize("extra, message", [
    ([], "--online needs --max-steps"),
    (["--max-steps", "5", "--rounds", "2"], "drop --rounds"),
    (["--max-steps", "5", "--accumulate"], "drop --accumulate"),
    (["--max-steps", "5", "--reference", "previous"], "drop --reference previous"),
    (["--max-steps", "5", "--early-stop", "--eval-every", "2"], "drop --early-stop"),
])
def test_online_refuses_meaningless_settings(tiny_model_dir, inputs, tmp_path, capsys, extra, message):
    prompts, judge = inputs
    argv = ["iterate", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--judge", f"py:{judge}:the",
            "--output", str(tmp_path / "run"), "--online", *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


# Runs `python -m dpokit ARGS` with one change: while a step draws its samples from the policy (OnlineSource.samples),
# the KILL_AT_SAMPLE_BATCH-th batch handed to the model (counted in this process) SIGKILLs the process from inside
# `generate`, after writing where it was. Held-out sampling is not counted.
SAMPLING_KILLER = '''
import json, os, runpy, signal, sys
from pathlib import Path

import dpokit.generate
from dpokit.train import online

batches, where = 0, {}
real_encode, real_samples = dpokit.generate.encode, online.OnlineSource.samples

def samples(self, step, draw):
    where.update(step=step, draw=draw, batch=0, path=self.samples_path)
    try:
        return real_samples(self, step, draw)
    finally:
        where.clear()

def encode(*a, **k):
    global batches
    if where:
        batches += 1
        where["batch"] += 1
        if batches == int(os.environ["KILL_AT_SAMPLE_BATCH"]):
            on_disk = [json.loads(x) for x in where["path"].read_text().rstrip("\\n").split("\\n")] if where["path"].exists() else []
            written = any((r["step"], r["draw"]) == (where["step"], where["draw"]) for r in on_disk)
            state = {"step": where["step"], "draw": where["draw"], "batch_of_draw": where["batch"], "written": written}
            Path(os.environ["KILL_LOG"]).write_text(json.dumps(state))
            os.kill(os.getpid(), signal.SIGKILL)
    return real_encode(*a, **k)

online.OnlineSource.samples, dpokit.generate.encode = samples, encode
sys.argv = ["dpokit", *sys.argv[1:]]
runpy.run_module("dpokit", run_name="__main__")
'''


def judged(state: Path) -> Counter:
    return Counter(map(tuple, (json.loads(x) for x in state.with_suffix(".log").read_text().rstrip("\n").split("\n"))))


@pytest.mark.slow
def test_online_killed_while_sampling_judging_and_training_resumes_equal(tiny_model_dir, inputs, tmp_path):
    import signal
    import time

    env = {**os.environ, "DPOKIT_CACHE": str(tmp_path / "cache"), "KILL_LOG": str(tmp_path / "kill.json")}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    done = run_cli(args(tiny_model_dir, inputs, whole), {**env, "JUDGE_STATE": str(tmp_path / "a.state")})
    assert done.returncode == 0, done.stderr[-2000:]
    env["JUDGE_STATE"] = str(tmp_path / "b.state")
    killer = tmp_path / "killer.py"
    killer.write_text(SAMPLING_KILLER)

    # 1. kill -9 while sampling: the 2nd of a draw's two batches (8 prompts × 4 samples, 16 a batch), draw 12 or so
    first = subprocess.run([sys.executable, str(killer), *args(tiny_model_dir, inputs, killed)],
                           env={**env, "KILL_AT_SAMPLE_BATCH": "24"}, capture_output=True, text=True)
    assert first.returncode == -9, first.stderr[-2000:]
    where = json.loads((tmp_path / "kill.json").read_text())
    assert where["batch_of_draw"] == 2 and not where["written"] and where["step"] >= 5, where
    assert (killed / "train" / "checkpoint-5").is_dir()  # resumed from a checkpoint, not from the start

    # 2. kill -9 while judging: the 6th judge call of the resumed run (its steps up to the kill are read back first)
    calls = int((tmp_path / "b.state").read_text())
    second = run_cli(args(tiny_model_dir, inputs, killed, "--resume"), {**env, "KILL_AT_CALL": str(calls + 6)})
    assert second.returncode == -9, second.stderr[-2000:]
    assert int((tmp_path / "b.state").read_text()) == calls + 5

    # 3. kill -9 from outside while training, once checkpoint-30 is written
    process = subprocess.Popen([sys.executable, "-m", "dpokit", *args(tiny_model_dir, inputs, killed, "--resume")],
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not (killed / "train" / "checkpoint-30").is_dir() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (killed / "train" / "final").exists(), "the kill came after training ended: nothing was tested"

    last = run_cli(args(tiny_model_dir, inputs, killed, "--resume"), env)
    assert last.returncode == 0, last.stderr[-2000:]
    assert judged(tmp_path / "b.state") == judged(tmp_path / "a.state")  # every sample judged once, none twice
    assert (tmp_path / "b.state").read_text() == (tmp_path / "a.state").read_text()  # in as many calls
    for name in ("samples.jsonl", "judgments.jsonl", "pairs.jsonl"):  # each written once, in the same order
        assert (killed / name).read_text() == (whole / name).read_text(), name
    a = load_file(whole / "train" / "final" / "model.safetensors")
    b = load_file(killed / "train" / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    read = lambda p: [{k: v for k, v in e.items() if k != "seconds"} for e in lines(p / "rounds.jsonl")]  # noqa: E731
    assert read(killed) == read(whole)
    steps = [m["step"] for m in lines(killed / "train" / "metrics.jsonl")]
    assert steps == list(range(1, STEPS + 1))  # continued, nothing logged twice
