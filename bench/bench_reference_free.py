"""Reference-free losses against DPO's reference: peak RSS, step time and wall time, side by side in one run.

    python bench/bench_reference_free.py [--model smollm2-135m-instruct] [--steps 8] [--batch-size 4]

Each configuration is one `dpokit dpo` process on the bundled hh-rlhf sample (same pairs, same order, same lengths):
  sigmoid, cached reference   the default: one reference pass over the pairs the run reaches, then a table
  sigmoid, live reference     --reference-cache off: a frozen second copy, one extra forward per step
  simpo / orpo                no reference at all
Peak RSS is the process's own maximum (os.wait4's ru_maxrss), so loading and the reference pass count. A step's time
is its tokens / tokens_per_s from metrics.jsonl (the loop's own timing of the step); the median over steps 2..N is
shown. Run it on an idle machine: two heavy jobs at once spoil both timings.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONFIGS = [
    ("sigmoid, cached reference", ["--loss", "sigmoid"]),
    ("sigmoid, live reference", ["--loss", "sigmoid", "--reference-cache", "off"]),
    ("simpo (no reference)", ["--loss", "simpo", "--beta", "2.0", "--gamma", "0.5"]),
    ("orpo (no reference)", ["--loss", "orpo", "--orpo-lambda", "0.1"]),
]


def cache_env(root: Path) -> dict:
    """A cold reference cache for every run, but the one-time GGUF conversion shared (it is not what is measured)."""
    gguf = Path(os.environ.get("DPOKIT_CACHE", Path.home() / ".cache" / "dpokit")) / "gguf"
    gguf.mkdir(parents=True, exist_ok=True)
    (root / "cache").mkdir(exist_ok=True)
    link = root / "cache" / "gguf"
    if not link.exists():
        link.symlink_to(gguf)
    return {**os.environ, "DPOKIT_CACHE": str(root / "cache")}


def run_one(args, extra: list[str], root: Path) -> dict:
    out = root / f"run{len(list(root.glob('run*')))}"
    command = [sys.executable, "-m", "dpokit", "dpo", "--model", args.model, "--data", "bundled:hh-rlhf-harmless",
               "--output", str(out), "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
               "--max-length", str(args.max_length), "--max-prompt-length", str(args.max_length // 2),
               "--learning-rate", "1e-6", "--max-eval-pairs", "8", *extra]
    env = cache_env(root)
    started = time.perf_counter()
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - started
    stdout, stderr = proc.stdout.read(), proc.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{stderr[-3000:]}\n{stdout[-1000:]}")
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [m for m in lines if "tokens_per_s" in m]  # "tokens" is the running total, "tokens_per_s" the step's rate
    seen = [0] + [m["tokens"] for m in train]
    steps = [(seen[i + 1] - seen[i]) / m["tokens_per_s"] for i, m in enumerate(train) if m["step"] >= 2]
    summary = json.loads((out / "summary.json").read_text())
    return {"peak_rss_gb": usage.ru_maxrss / 2**20, "step_s": statistics.median(steps), "wall_s": wall,
            "reference": summary["reference"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--max-length", type=int, default=256)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-reffree-") as tmp:
        warm = "from dpokit.models import resolve_model_path; import sys; resolve_model_path(sys.argv[1])"
        subprocess.run([sys.executable, "-c", warm, args.model], env=cache_env(Path(tmp)), check=True)
        for label, extra in CONFIGS:
            result = run_one(args, extra, Path(tmp))
            rows.append((label, result))
            print(f"  done: {label}", file=sys.stderr, flush=True)
    print(f"model {args.model}, {args.steps} steps × {args.batch_size} pairs, max_length {args.max_length}, "
          f"{os.cpu_count()} CPUs")
    print(f"| {'configuration':<28} | {'reference':<10} | {'peak RSS GB':>11} | {'step s (median)':>15} | "
          f"{'wall s':>7} |")
    print(f"|{'-' * 30}|{'-' * 12}|{'-' * 13}:|{'-' * 17}:|{'-' * 8}:|")
    for label, r in rows:
        reference = "none" if r["reference"] == "none" else "live" if r["reference"] == "live" else "cached"
        print(f"| {label:<28} | {reference:<10} | {r['peak_rss_gb']:>11.2f} | {r['step_s']:>15.2f} | "
              f"{r['wall_s']:>7.1f} |")


if __name__ == "__main__":
    main()
