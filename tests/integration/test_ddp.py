"""Several processes (DDP over gloo on CPU, through accelerate) train exactly like one process."""
import json
import sys

import pytest
import torch
from safetensors.torch import load_file

from launch import common, final_weights as weights, kill_all_after_step, launch, losses, write_pairs

pytestmark = pytest.mark.slow  # several processes or long runs: not in the fast tier


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("ddp") / "d.jsonl")


def run(args, cache, wait=True):
    return launch([sys.executable, "-m", "dpokit", "dpo"], args, cache, wait)


# Both are 2 processes × 2 pairs per step; with --grad-accum 2 each process's 2 pairs are two micro-batches (DDP's
# no_sync before the last). The cached reference without accumulation runs in the kill/resume test below.
@pytest.mark.parametrize("flags", [["--reference-cache", "off"], ["--reference-cache", "on", "--grad-accum", 2]],
                         ids=["live", "cached-grad-accum"])
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
    kill_all_after_step(proc, metrics, 3)  # the launcher and both workers
    assert not (killed / "final").exists()
    resumed = run(common(tiny_model_dir, data, killed, steps=6) + args + ["--resume"], tmp_path / "c")
    assert resumed.returncode == 0, resumed.stderr[-8000:]
    assert json.loads((killed / "summary.json").read_text())["processes"] == 2
    a, b = weights(straight), weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(0, 7))


def test_user_error_in_two_processes_stops_both_without_hanging(tiny_model_dir, data, tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("precious")
    # A rank that waited forever at a barrier would run into launch()'s subprocess timeout and fail the test.
    result = run(common(tiny_model_dir, data, used) + ["--nproc", 2], tmp_path / "c")
    assert result.returncode != 0 and "in use" in result.stderr
    assert (used / "keep.txt").read_text() == "precious"
