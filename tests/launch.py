"""Runs of `dpokit` in fresh processes (one, or several under a launcher) and what the multi-process tests read back."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from safetensors.torch import load_file


def write_pairs(path: Path, count: int = 24) -> Path:
    rows = [{"prompt": f"Question {i}: is it safe?", "chosen": f" Yes, item {i} is fine and useful.",
             "rejected": f" Never {i}!"} for i in range(count)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def launch(command: list[str], args, cache, wait=True):
    """`command` + args with one thread per process and its own reference cache; wait=False: a Popen in its own
    process group (so a kill reaches the launcher and every worker)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DPOKIT_CACHE": str(cache)}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "ACCELERATE_USE_DEEPSPEED"):
        env.pop(name, None)
    cmd = command + [str(a) for a in args]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def common(model, data, out, steps=3):
    return ["--model", model, "--data", data, "--output", out, "--max-steps", steps, "--batch-size", 4,
            "--learning-rate", 1e-3, "--eval-fraction", 0.25]


def final_weights(run_dir: Path) -> dict:
    final = run_dir / "final"
    name = "adapter_model.safetensors" if (final / "adapter_model.safetensors").exists() else "model.safetensors"
    return load_file(final / name)


def losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]  # training steps (step 0 is the initial eval)


def kill_all_after_step(proc, metrics: Path, step: int, timeout: float = 300) -> None:
    """SIGKILL `proc` and every process under it (a launcher and its workers) once metrics.jsonl has logged `step`.

    Killing the process group is not enough: torch's elastic agent starts each worker in a session of its own, so a
    group kill leaves the workers running as orphans, and they go on to finish the run."""
    import psutil

    deadline = time.time() + timeout
    while time.time() < deadline:
        if metrics.exists() and any(json.loads(x).get("step", 0) >= step for x in metrics.read_text().splitlines()
                                    if x.endswith("}")):
            break
        time.sleep(0.05)
    family = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]  # before any dies
    for member in family:
        try:
            member.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(family, timeout=30)
    assert not alive, f"still running after SIGKILL: {alive}"
    proc.wait()
