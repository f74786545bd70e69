"""The shipped DeepSpeed ZeRO-2 / ZeRO-3 launch files run 2 real processes on CPU (DeepSpeed's CPU accelerator over
gloo) and train exactly like one plain process; a killed ZeRO-3 run resumes bit for bit from its sharded state."""
import json
import sys
from pathlib import Path

import pytest
import torch

from launch import common, final_weights, kill_all_after_step, launch, losses, write_pairs

pytest.importorskip("deepspeed")

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "accelerate"

pytestmark = pytest.mark.slow  # several processes or long runs: not in the fast tier


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("ds") / "d.jsonl")


def command(zero: int | None, verb: str) -> list[str]:
    """`accelerate launch --config_file configs/accelerate/deepspeed_zeroN.yaml --num_processes 2 -m dpokit VERB`,
    as docs/scale.md gives it; `zero=None`: one plain process."""
    if zero is None:
        return [sys.executable, "-m", "dpokit", verb]
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / f"deepspeed_zero{zero}.yaml"),
            "--num_processes", "2", "-m", "dpokit", verb]


def run(zero, args, cache, verb="dpo", wait=True):
    return launch(command(zero, verb), args, cache, wait)


CASES = {  # id: (ZeRO stage, extra flags). The cached reference under ZeRO-3 is the kill/resume test's default.
    "zero2-live-reference-grad-accum": (2, ["--reference-cache", "off", "--grad-accum", 2]),
    "zero3-lora-adapters-off-reference": (3, ["--lora-r", 4, "--reference-cache", "off"]),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_two_deepspeed_processes_of_two_pairs_equal_one_process_of_four(tiny_model_dir, data, tmp_path, case):
    zero, flags = CASES[case]
    one, two = tmp_path / "one", tmp_path / "two"
    r1 = run(None, common(tiny_model_dir, data, one) + flags, tmp_path / "c1")
    r2 = run(zero, common(tiny_model_dir, data, two) + flags, tmp_path / "c2")
    assert r1.returncode == 0, r1.stderr[-2000:]
    assert r2.returncode == 0, r2.stderr[-2000:]
    summary = json.loads((two / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["engine"] == f"deepspeed zero-{zero}"  # the engine really ran
    a, b = final_weights(one), final_weights(two)  # under ZeRO-3 final/ holds weights gathered from both shards
    assert sorted(a) == sorted(b)
    assert max(float((a[k] - b[k]).abs().max()) for k in a) <= 1e-5
    assert losses(two) == pytest.approx(losses(one), rel=1e-5) and len(losses(one)) == 3
    assert summary["train_tokens"] == json.loads((one / "summary.json").read_text())["train_tokens"]


def test_killed_zero3_run_resumes_bit_for_bit(tiny_model_dir, data, tmp_path):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    args = ["--save-every", 1]
    done = run(3, common(tiny_model_dir, data, straight, steps=6) + args, tmp_path / "c")
    assert done.returncode == 0, done.stderr[-2000:]
    proc = run(3, common(tiny_model_dir, data, killed, steps=6) + args, tmp_path / "c", wait=False)
    metrics = killed / "metrics.jsonl"
    kill_all_after_step(proc, metrics, 3)  # the launcher and both workers
    assert not (killed / "final").exists()
    shards = sorted(p.name for p in (killed / "checkpoint-2" / "sharded").rglob("*optim_states.pt"))
    assert len(shards) == 2  # each process wrote its own part of the optimizer state
    resumed = run(3, common(tiny_model_dir, data, killed, steps=6) + args + ["--resume"], tmp_path / "c")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a, b = final_weights(straight), final_weights(killed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(x)["step"] for x in metrics.read_text().splitlines()]
    assert steps == list(range(0, 7))
