"""dpokit against TRL's DPOTrainer: same model, same pairs, same hyper-parameters; one table.

    python bench/bench_dpo.py            # tiny Llama at 8 pairs/step and SmolLM2-135M at 2 pairs/step (~15 min, 2 cores)
    python bench/bench_dpo.py --quick    # tiny Llama only, 2 pairs/step, 3 steps (~2 min)

Every run is its own process (peak RSS = that process's ru_maxrss), and the runs alternate: TRL default, dpokit
(cached reference), TRL with precompute_ref_log_probs=True, dpokit with a live reference. See bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ORDER = ("trl", "dpokit", "trl-precompute", "dpokit-live")  # alternating TRL / dpokit
LABELS = {"trl": "TRL default", "trl-precompute": "TRL precompute_ref_log_probs", "dpokit": "dpokit (cached reference)",
          "dpokit-live": "dpokit --reference-cache off"}
LIVE_REFERENCE = {"trl": True, "trl-precompute": False, "dpokit": False, "dpokit-live": True}
# (dpokit run, TRL run, tokens/s target, peak-RSS target); None: shown, no target
COMPARISONS = (("dpokit", "trl", 3.0, 0.4), ("dpokit", "trl-precompute", 2.0, 0.4), ("dpokit-live", "trl", None, None))
LOSS_RTOL = 1e-4
SHOWN_LOSSES = 5


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny model only, 2 pairs/step, 3 steps (~2 min)")
    p.add_argument("--configs", default=None, help="comma list of tiny,smollm2 (default: both; --quick: tiny)")
    p.add_argument("--runs", default=",".join(ORDER), help=f"comma list, run in this order (default {','.join(ORDER)})")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 5; --quick 3); "
                                                           "step 1 is left out of every timing")
    p.add_argument("--repeats", type=int, default=1, help="times each run is repeated (the median is shown)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per run (default: torch's default)")
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "dpokit-bench"),
                   help="models, pairs, logs and results (default: %(default)s)")
    p.add_argument("--worker", choices=ORDER, help=argparse.SUPPRESS)
    p.add_argument("--spec", help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def plan(args) -> list[tuple[str, int]]:
    """(configuration, pairs per step) to run."""
    pairs = {"tiny": 2 if args.quick else 8, "smollm2": 2}
    names = args.configs.split(",") if args.configs else (["tiny"] if args.quick else ["tiny", "smollm2"])
    unknown = [n for n in names if n not in pairs]
    if unknown:
        raise SystemExit(f"--configs: unknown {unknown[0]!r}; choose from tiny, smollm2")
    return [(n, pairs[n]) for n in names]


def run_worker(run: str, workload, workdir: Path, repeat: int, threads) -> dict:
    """One run in a fresh process; returns its result plus peak RSS and wall time measured from outside."""
    folder = workdir / "runs" / f"{workload.name}-{run}-{repeat}"
    folder.mkdir(parents=True, exist_ok=True)
    spec = {"model": str(workload.model_dir), "ids_file": str(workload.ids_file), "pairs_file": str(workload.pairs_file),
            "batch_size": workload.batch_size, "steps": workload.steps, "output": str(folder / "output"),
            "threads": threads}
    (folder / "spec.json").write_text(json.dumps(spec))
    result_path = folder / "result.json"
    result_path.unlink(missing_ok=True)
    env = dict(os.environ, DPOKIT_CACHE=tempfile.mkdtemp(prefix="cache-", dir=folder),  # a fresh reference cache
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", run, "--spec", str(folder / "spec.json"),
           "--result", str(result_path)]
    print(f"  {workload.name:<8} {LABELS[run]:<30}", end="", flush=True)
    started = time.perf_counter()
    with open(folder / "log.txt", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage: its peak RSS
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0 or not result_path.is_file():
        tail = (folder / "log.txt").read_text(errors="replace").splitlines()[-25:]
        raise SystemExit(f"\n{run} on {workload.name} failed (exit {proc.returncode}); log {folder / 'log.txt'}:\n"
                         + "\n".join(tail))
    result = json.loads(result_path.read_text())
    result.update(peak_rss_mb=usage.ru_maxrss / 1024, wall_s=wall)  # Linux: KiB
    print(f" {wall:6.0f} s, peak RSS {result['peak_rss_mb']:.0f} MB", flush=True)
    return result


def timed(values: list) -> list:
    return values[1:] if len(values) > 1 else values  # step 1 (allocator and optimizer-state warm-up) left out


def summarise(results: list[dict], floors: dict[bool, list[float]], live: bool) -> dict:
    """Median over repeats of each run's figures; tokens/s = timed tokens / timed seconds."""
    def per_repeat(r):
        secs, toks = timed(r["step_seconds"]), timed(r["step_tokens"])
        floor = timed(floors[live])
        return {"tokens_per_s": sum(toks) / sum(secs), "median_step_s": statistics.median(secs),
                "floor_fraction": sum(floor) / sum(secs), "peak_rss_mb": r["peak_rss_mb"], "wall_s": r["wall_s"],
                "ref_pass_s": r["ref_pass_s"]}
    rows = [per_repeat(r) for r in results]
    out = {k: None if rows[0][k] is None else statistics.median(row[k] for row in rows) for k in rows[0]}
    out["losses"] = results[0]["losses"]
    out["floor_step_s"] = statistics.median(timed(floors[live]))
    return out


def rel(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-30)


def fmt_s(value) -> str:
    return "—" if value is None else f"{value:.1f}"


def tables(name: str, workload, shape, summary: dict[str, dict], rate: float) -> str:
    lines = [f"### {name}: {shape.params / 1e6:.1f}M parameters, {workload.batch_size} pairs/step, "
             f"{workload.steps} steps (step 1 not timed)", "",
             "| run | tokens/s | median step s | floor step s | % of floor | peak RSS MB | reference pass s | wall s |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for run, s in summary.items():
        lines.append(f"| {LABELS[run]} | {s['tokens_per_s']:.0f} | {s['median_step_s']:.2f} | {s['floor_step_s']:.2f} | "
                     f"{100 * s['floor_fraction']:.0f}% | {s['peak_rss_mb']:.0f} | {fmt_s(s['ref_pass_s'])} | "
                     f"{s['wall_s']:.0f} |")
    lines += ["", "| run | " + " | ".join(f"loss {i + 1}" for i in range(SHOWN_LOSSES)) + " |",
              "|---|" + "---:|" * SHOWN_LOSSES]
    for run, s in summary.items():
        shown = [f"{v:.7f}" for v in s["losses"][:SHOWN_LOSSES]]
        lines.append(f"| {LABELS[run]} | " + " | ".join(shown + [""] * (SHOWN_LOSSES - len(shown))) + " |")
    lines += ["", "| dpokit ÷ TRL | tokens/s | peak RSS | step-1 loss rel. diff | max rel. diff, losses 1–5 | targets |",
              "|---|---:|---:|---:|---:|---|"]
    for ours, theirs, speed_target, rss_target in COMPARISONS:
        if ours not in summary or theirs not in summary:
            continue
        a, b = summary[ours], summary[theirs]
        speed, rss = a["tokens_per_s"] / b["tokens_per_s"], a["peak_rss_mb"] / b["peak_rss_mb"]
        n = min(len(a["losses"]), len(b["losses"]), SHOWN_LOSSES)
        first = rel(a["losses"][0], b["losses"][0])
        worst = max(rel(x, y) for x, y in zip(a["losses"][:n], b["losses"][:n]))
        if speed_target is None:
            verdict = "like for like (both run the reference every step)"
        else:
            checks = [f"{speed_target:g}× {'met' if speed >= speed_target else 'MISSED'}",
                      f"RSS ≤ {rss_target:g}× {'met' if rss <= rss_target else 'MISSED'}",
                      f"loss {'met' if first <= LOSS_RTOL else 'MISSED'}"]
            verdict = ", ".join(checks)
        lines.append(f"| {LABELS[ours]} ÷ {LABELS[theirs]} | {speed:.2f}× | {rss:.2f}× | {first:.1e} | {worst:.1e} | "
                     f"{verdict} |")
    lines += ["", f"Floor: FLOPs of a step on its useful tokens (2·P·T + attention per forward; policy forward + "
                  f"backward = 3 forwards, a live reference one more) at {rate:.0f} GFLOP/s."]
    return "\n".join(lines)


def machine_line(rate_before: float, rate_after: float, load_before, load_after, threads) -> str:
    import torch
    import transformers
    import trl

    cpu = platform.processor() or "cpu"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({threads or torch.get_num_threads()} threads), "
            f"transformers {transformers.__version__}, trl {trl.__version__}. fp32 matmul (2048², best of 5): "
            f"{rate_before:.0f} GFLOP/s before, {rate_after:.0f} after (floor uses the higher). Load average "
            f"{load_before[0]:.1f} before, {load_after[0]:.1f} after (the machine may be shared).")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        from bench_workers import main as worker_main  # bench/ is on sys.path: it holds this script

        worker_main(args.worker, args.spec, args.result)
        return 0

    import bench_prepare as prep

    runs = args.runs.split(",")
    if any(r not in ORDER for r in runs):
        raise SystemExit(f"--runs: choose from {', '.join(ORDER)}")
    steps = args.steps or (3 if args.quick else 5)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"dpokit bench: preparing models and pairs in {workdir}", flush=True)
    workloads = []
    for name, batch_size in plan(args):
        model_dir = prep.tiny_llama_dir(workdir) if name == "tiny" else prep.smollm2_dir()
        workloads.append(prep.write_workload(name, model_dir, batch_size, steps, workdir / "data" / name))

    if args.threads:  # the matmul rate is measured with the runs' thread count
        import torch

        torch.set_num_threads(args.threads)
    load_before, rate_before = os.getloadavg(), prep.matmul_gflops()
    results: dict[str, dict[str, list]] = {w.name: {r: [] for r in runs} for w in workloads}
    for workload in workloads:
        expected = prep.step_token_counts(workload)
        for repeat in range(args.repeats):
            for run in runs:
                result = run_worker(run, workload, workdir, repeat, args.threads)
                if result["step_tokens"] != expected or len(result["losses"]) != workload.steps:
                    raise SystemExit(f"{run} on {workload.name}: trained on {result['step_tokens']} tokens per step "
                                     f"({len(result['losses'])} losses); expected {expected}: not the same pairs")
                results[workload.name][run].append(result)
    load_after, rate_after = os.getloadavg(), prep.matmul_gflops()
    rate = max(rate_before, rate_after)

    sections = []
    for workload in workloads:
        shape = prep.ModelShape.of(workload.model_dir)
        ids = json.loads(workload.ids_file.read_text())
        b = workload.batch_size
        floors = {live: [prep.step_flops(shape, ids[s * b:(s + 1) * b], live) / (rate * 1e9)
                         for s in range(workload.steps)] for live in (True, False)}
        summary = {run: summarise(results[workload.name][run], floors, LIVE_REFERENCE[run]) for run in runs}
        label = "tiny Llama" if workload.name == "tiny" else "SmolLM2-135M"
        sections.append(tables(label, workload, shape, summary, rate))
    report = "\n\n".join([machine_line(rate_before, rate_after, load_before, load_after, args.threads)] + sections)
    print("\n" + report)
    (workdir / "results.md").write_text(report + "\n")
    (workdir / "results.json").write_text(json.dumps(results, indent=1))
    print(f"\n(also in {workdir / 'results.md'}; raw per-step figures in {workdir / 'results.json'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
