"""One DPO job under each engine accelerate offers on this machine, side by side with `dpokit plan`'s estimate.

    python bench/bench_engines.py                       # SmolLM2-135M, 2 pairs/step of 512 tokens, 3 steps (~10 min, 2 cores)
    python bench/bench_engines.py --model small         # a 10M Llama built here (~3 min)

Runs, each a fresh launch: one plain process; DDP × 2 (`dpokit dpo --nproc 2`); DeepSpeed ZeRO-2 × 2 and ZeRO-3 × 2
(`accelerate launch --config_file configs/accelerate/deepspeed_zeroN.yaml --num_processes 2`). Every pair is longer
than --max-length, so each is cut to exactly the planner's worst case and the run and the plan see the same
tokens. Peak RSS is each process's own ru_maxrss, gathered into summary.json; the table shows the largest. On one
machine the processes share its cores, so tokens/s says what the engines cost here, not how they scale.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENGINES = {  # name: (launch prefix, processes, planner's --zero)
    "one process": ([sys.executable, "-m", "dpokit", "dpo"], 1, "0"),
    "DDP": ([sys.executable, "-m", "dpokit", "dpo", "--nproc", "2"], 2, "0"),
    "ZeRO-2": ([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(ROOT / "configs/accelerate/deepspeed_zero2.yaml"), "--num_processes", "2", "-m", "dpokit", "dpo"], 2, "2"),
    "ZeRO-3": ([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(ROOT / "configs/accelerate/deepspeed_zero3.yaml"), "--num_processes", "2", "-m", "dpokit", "dpo"], 2, "3"),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m-instruct", help="a model folder, the embedded name, or 'small'")
    p.add_argument("--engines", default=",".join(ENGINES), help="comma list (default: all)")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=2, help="pairs per step over all processes")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--prompt-length", type=int, default=256)
    p.add_argument("--workdir", default=str(Path(tempfile.gettempdir()) / "dpokit-bench-engines"))
    return p.parse_args(argv)


def small_llama(workdir: Path) -> Path:
    """The 10.0M-parameter Llama of tests/integration/test_plan_measured.py."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny import make_tokenizer

    path = workdir / "small-llama"
    if not (path / "config.json").exists():
        tokenizer = make_tokenizer()
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=512, intermediate_size=1024, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                             tie_word_embeddings=False)
        LlamaForCausalLM(config).save_pretrained(path)
        tokenizer.save_pretrained(path)
    return path


def long_pairs(workdir: Path, count: int) -> Path:
    rng = random.Random(0)
    words = "the of and to in is you that it was for on are as with they at be this have from or one had".split()
    text = lambda n: " ".join(rng.choice(words) for _ in range(n))  # noqa: E731
    path = workdir / "pairs.jsonl"
    path.write_text("".join(json.dumps({"prompt": text(600), "chosen": text(600), "rejected": text(600)}) + "\n"
                            for _ in range(count)))
    return path


def run(engine: str, model: str, pairs: Path, args, workdir: Path) -> dict:
    prefix, _, _ = ENGINES[engine]
    out = workdir / "runs" / engine.replace(" ", "-")
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 2) // ENGINES[engine][1])),
           "DPOKIT_CACHE": str(workdir / "cache")}
    cmd = prefix + ["--model", model, "--data", str(pairs), "--output", str(out), "--overwrite",
                    "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
                    "--max-length", str(args.max_length), "--max-prompt-length", str(args.prompt_length),
                    "--eval-fraction", "0"]
    print(f"  {engine:<12}", end="", flush=True)
    started = time.perf_counter()
    with open(workdir / f"log-{engine.replace(' ', '-')}.txt", "w") as log:
        code = subprocess.call(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
    wall = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"\n{engine} failed (exit {code}); see {log.name}")
    summary = json.loads((out / "summary.json").read_text())
    print(f" {wall:5.0f} s", flush=True)
    return {**summary, "wall_s": wall}


def planned_mb(model: str, engine: str, args) -> float:
    from dpokit.plan import PlanSettings, make_plan, model_shape

    _, processes, zero = ENGINES[engine]
    settings = PlanSettings(device="cpu", gpus=processes, gpu_mem_gb=64, batch_size=args.batch_size,
                            max_length=args.max_length, prompt_length=args.prompt_length, dtype="float32", zero=zero)
    return make_plan(model_shape(model), settings).total / 2**20


def main(argv=None) -> None:
    args = parse_args(argv)
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    model = str(small_llama(workdir)) if args.model == "small" else args.model
    pairs = long_pairs(workdir, max(8, args.batch_size * args.steps))
    engines = args.engines.split(",")
    print(f"dpokit engines bench: {args.model}, {args.batch_size} pairs/step of {args.max_length} tokens "
          f"(prompt {args.prompt_length}), {args.steps} steps, float32, {os.cpu_count()} cores")
    results = {engine: run(engine, model, pairs, args, workdir) for engine in engines}
    first = next(iter(results.values()))
    lines = ["", "| engine | processes | tokens/s | peak RSS per process MB (largest) | planned MB | plan error | "
             "final loss | wall s |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for engine, r in results.items():
        peak = max(r.get("peak_rss_mb_per_process") or [r["peak_rss_mb"]])
        plan = planned_mb(model, engine, args)
        records = [json.loads(x) for x in (Path(r["output"]).parent / "metrics.jsonl").read_text().splitlines()]
        loss = [x["loss"] for x in records if "loss" in x][-1]
        lines.append(f"| {engine} | {r['processes']} | {r['tokens_per_s']:.0f} | {peak:.0f} | {plan:.0f} | "
                     f"{plan / peak - 1:+.1%} | {loss:.6f} | {r['wall_s']:.0f} |")
    assert all(r["train_tokens"] == first["train_tokens"] for r in results.values())  # the same tokens everywhere
    print("\n".join(lines))
    (workdir / "results.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
