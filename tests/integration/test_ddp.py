"""Several processes (DDP over gloo on CPU, through accelerate) train exactly like one process."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rows = [{"prompt": f"Question {i}: is it safe?", "chosen": f" Yes, item {i} is fine and useful.",
             "rejected": f" Never {i}!"} for i in range(24)]
    path = tmp_path_factory.mktemp("ddp") / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run(args, cache, wait=True):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DPOKIT_CACHE": str(cache)}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "dpokit", "dpo", *map(str, args)]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def common(model, data, out, steps=3):
    return ["--model", model, "--data", data, "--output", out, "--max-steps", steps, "--batch-size", 4,
            "--learning-rate", 1e-3, "--eval-fraction", 0.25]


def weights(run_dir):
    return load_file(run_dir / "final" / "model.safetensors")


def losses(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]  # training steps (step 0 is the initial eval)


@pytest.mark.parametrize("flags", [["--reference-cache", "off"], ["--reference-cache", "on"],
                                   ["--reference-cache", "on", "--grad-accum", 2]],
                         ids=["live", "cached", "cached-grad-accum"])  # grad-accum: DDP's no_sync between micro-batches
def test_two_processes_of_two_pairs_equal_one_process_of_four(tiny_model_dir, data, tmp_path, flags):
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = run(common(tiny_model_dir, data, one) + flags, tmp_path / "c1")
    r2 = run(common(tiny_model_dir, data, two) + flags + ["--nproc", 2], tmp_path / "c2")
    assert r1.returncode == 0, r1.stderr[-1500:]
    assert r2.returncode == 0, r2.stderr[-1500:]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["engine"] == "ddp"  # really two ranks, not one
    a, b = weights(one), weights(two)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    assert not torch.equal(a["model.embed_tokens.weight"], load_file(tiny_model_dir / "model.safetensors")
                           ["model.embed_tokens.weight"])  # it did train
    assert len(losses(one)) == 3 and losses(two) == pytest.approx(losses(one), rel=1e-5)
    assert json.loads((two / "summary.json").read_text())["train_tokens"] == \
        json.loads((one / "summary.json").read_text())["train_tokens"]  # tokens counted over both processes


def test_kill_and_resume_with_two_processes(tiny_model_dir, data, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = ["--save-every", 1, "--nproc", 2]
    assert run(common(tiny_model_dir, data, straight, steps=6) + args, tmp_path / "c").returncode == 0
    proc = run(common(tiny_model_dir, data, killed, steps=6) + args, tmp_path / "c", wait=False)
    metrics = killed / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline:
        if metrics.exists() and any(json.loads(x).get("step", 0) >= 3 for x in metrics.read_text().splitlines()
                                    if x.endswith("}")):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers
    proc.wait()
    assert not (killed / "final").exists()
    resumed = run(common(tiny_model_dir, data, killed, steps=6) + args + ["--resume"], tmp_path / "c")
    assert resumed.returncode == 0, resumed.stderr[-1500:]
    assert json.loads((killed / "summary.json").read_text())["processes"] == 2
    a, b = weights(straight), weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(0, 7))


def test_user_error_in_two_processes_stops_both_without_hanging(tiny_model_dir, data, tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("precious")
    started = time.time()
    result = run(common(tiny_model_dir, data, used) + ["--nproc", 2], tmp_path / "c")
    assert result.returncode != 0 and "in use" in result.stderr
    assert time.time() - started < 120  # every rank stops; none waits forever at a barrier
    assert (used / "keep.txt").read_text() == "precious"
