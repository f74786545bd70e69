"""kill -9 mid-run, then `dpokit dpo --resume`: bit-identical weights and a gap-free metrics.jsonl.

The uninterrupted run and the killed run use the same command (CPU, same seed, a checkpoint every step),
so the only difference is the SIGKILL. A checkpoint cut off while being written is simulated the way the
loop would leave it: a `.checkpoint-N.tmp` folder (killed before the rename), or a `checkpoint-N` folder
without `step.json` (never finished); `--resume` must skip it and take the previous complete checkpoint.
"""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

STEPS = 8
KILL_STEP = random.Random("dpokit-kill-resume").randint(3, 6)  # seeded, so a failure reproduces
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # one thread: tiny models run fastest, and CPU math is reproducible

pytestmark = pytest.mark.slow  # several processes or long runs: not in the fast tier


def command(model_dir: Path, data: Path, output: Path) -> list[str]:
    return [sys.executable, "-m", "dpokit", "dpo", "--model", str(model_dir), "--data", str(data),
            "--output", str(output), "--max-steps", str(STEPS), "--batch-size", "4", "--save-every", "1",
            "--learning-rate", "1e-3", "--seed", "0", "--eval-fraction", "0.25", "--max-length", "96",
            "--max-prompt-length", "48"]


def run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=300)


def read_metrics(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if line.strip()]


def written_steps(metrics: Path) -> list[int]:
    """Steps of the complete lines of a metrics.jsonl another process is still appending to."""
    if not metrics.exists():
        return []
    steps = []
    for line in metrics.read_text().split("\n")[:-1]:  # the piece after the last newline may be half-written
        try:
            steps.append(json.loads(line)["step"])
        except ValueError:
            pass
    return steps


def complete_checkpoints(output: Path) -> list[int]:
    return sorted(int(p.name.split("-")[1]) for p in output.glob("checkpoint-*") if (p / "step.json").is_file())


def assert_same_weights(expected: Path, actual: Path) -> None:
    a = load_file(expected / "final" / "model.safetensors")
    b = load_file(actual / "final" / "model.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ from the uninterrupted run: {different[:5]}"


def assert_same_metrics(expected: Path, actual: Path) -> None:
    """Steps 0..STEPS exactly once each, and every logged value equal to the uninterrupted run's
    (tokens_per_s is wall-clock, so it is the one value allowed to differ)."""
    a, b = read_metrics(expected), read_metrics(actual)
    assert [m["step"] for m in b] == list(range(STEPS + 1))
    for x, y in zip(a, b):
        x.pop("tokens_per_s", None)
        y.pop("tokens_per_s", None)
        assert x == y, f"metrics differ at step {x['step']}"


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory) -> Path:
    """32 short arithmetic pairs; prompt and responses reach the 48/96 token limits, so a step takes ~0.1 s."""
    rows = []
    for i in range(32):
        extra = i % 5 + 2
        rows.append({
            "prompt": f"Human: I have {i} apples and my friend gives me {extra} more. How many apples do I have "
                      "now, and can you explain how you worked it out?",
            "chosen": f" You now have {i + extra} apples: start from {i}, add the {extra} your friend gave you, "
                      "and count the total.",
            "rejected": f" I am not sure, perhaps {3 * i + 1} apples, but apples are hard to count so I would "
                        "not trust that answer at all.",
        })
    path = tmp_path_factory.mktemp("kill-resume-data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def uninterrupted(tiny_model_dir, pairs_file, tmp_path_factory) -> Path:
    output = tmp_path_factory.mktemp("kill-resume") / "straight"
    result = run(command(tiny_model_dir, pairs_file, output))
    assert result.returncode == 0, result.stderr[-2000:]
    assert [m["step"] for m in read_metrics(output)] == list(range(STEPS + 1))
    assert complete_checkpoints(output) == [STEPS - 2, STEPS - 1]  # --keep-checkpoints 2; none at the last step
    return output


def test_sigkill_mid_run_then_resume_is_bit_identical(tiny_model_dir, pairs_file, uninterrupted, tmp_path):
    output = tmp_path / "killed"
    cmd = command(tiny_model_dir, pairs_file, output)
    with open(tmp_path / "killed.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV)
        deadline = time.monotonic() + 240
        try:
            while max(written_steps(output / "metrics.jsonl"), default=-1) < KILL_STEP:
                assert proc.poll() is None, f"run ended (rc {proc.returncode}) before step {KILL_STEP} was logged"
                assert time.monotonic() < deadline, f"step {KILL_STEP} not logged within 240 s"
                time.sleep(0.002)
            os.kill(proc.pid, signal.SIGKILL)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "the run finished before the kill landed: nothing was tested"

    logged = written_steps(output / "metrics.jsonl")
    kept = complete_checkpoints(output)
    half_written = sorted(p.name for p in output.glob(".checkpoint-*.tmp"))
    print(f"\nkill: requested after step {KILL_STEP}; metrics logged through step {logged[-1]}; "
          f"complete checkpoints {kept}; half-written {half_written or 'none'}")
    assert KILL_STEP <= logged[-1] <= STEPS  # a busy machine may let it run a little past KILL_STEP
    assert kept and kept[-1] >= KILL_STEP - 1  # checkpoint k-1 is complete before step k is logged

    result = run(cmd + ["--resume"])
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((output / "summary.json").read_text())
    assert summary["resumed_from"] == kept[-1]  # it resumed from the newest complete checkpoint, not from scratch
    assert_same_weights(uninterrupted, output)
    assert_same_metrics(uninterrupted, output)
    assert not list(output.glob(".checkpoint-*"))


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def leave_tmp_folder(checkpoint: Path) -> None:
    """Killed inside save_checkpoint before `tmp.rename(target)`: weights half-flushed, no step.json."""
    tmp = checkpoint.with_name(f".{checkpoint.name}.tmp")
    checkpoint.rename(tmp)
    (tmp / "step.json").unlink()
    truncate(tmp / "model.safetensors")


def leave_folder_without_step_json(checkpoint: Path) -> None:
    """A checkpoint folder that was never finished (e.g. copied, or written by a non-atomic filesystem)."""
    (checkpoint / "step.json").unlink()
    truncate(checkpoint / "model.safetensors")
    (checkpoint / "trainer_state.pt").unlink()


@pytest.mark.parametrize("cut_off", [leave_tmp_folder, leave_folder_without_step_json],
                         ids=["dot-tmp-folder", "folder-without-step-json"])
def test_kill_during_checkpoint_write_resumes_from_previous_checkpoint(tiny_model_dir, pairs_file, uninterrupted,
                                                                       tmp_path, cut_off):
    # Rebuild the state of a run killed while writing checkpoint-7: step 7 is logged (the loop logs before it
    # saves), checkpoint-6 is complete, checkpoint-7 is cut off, and there is no final model yet.
    output = tmp_path / "cut"
    shutil.copytree(uninterrupted, output)
    shutil.rmtree(output / "final")
    (output / "summary.json").unlink()
    metrics = output / "metrics.jsonl"
    metrics.write_text("".join(line + "\n" for line in metrics.read_text().splitlines()
                               if json.loads(line)["step"] <= STEPS - 1))
    cut_off(output / f"checkpoint-{STEPS - 1}")
    assert complete_checkpoints(output) == [STEPS - 2]

    result = run(command(tiny_model_dir, pairs_file, output) + ["--resume"])
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((output / "summary.json").read_text())["resumed_from"] == STEPS - 2
    assert_same_weights(uninterrupted, output)
    assert_same_metrics(uninterrupted, output)
    # Step 7 was redone and its checkpoint written again, whole; the leftover is gone.
    assert complete_checkpoints(output) == [STEPS - 2, STEPS - 1]
    assert json.loads((output / f"checkpoint-{STEPS - 1}" / "step.json").read_text())["step"] == STEPS - 1
    assert not list(output.glob(".checkpoint-*"))
