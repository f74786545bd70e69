"""Online DPO speed: one `dpokit iterate` round against TRL 1.16's experimental OnlineDPOTrainer, side by side.

    python bench/bench_iterate.py            # 64 prompts, K = 2, 64 new tokens, 8 pairs per step (~10 min, 2 cores)
    python bench/bench_iterate.py --quick    # smoke test: 4 prompts, 8 new tokens, 2 pairs per step (~1 min)

Both sides start from the same SmolLM2-135M-Instruct folder, sample K = 2 answers to the same hh-rlhf prompts (plain
text, no chat template, temperature 1), score them with the same reward model folder (a 1-logit SmolLM2 head from a
few steps of `dpokit reward`: its accuracy does not matter here) and train sigmoid DPO at the same learning rate, β,
clipping and pairs per step. What differs is the schedule: TRL generates, judges and trains inside every step (2 answers
per prompt of the step's batch, a live reference model), dpokit samples and judges the whole round first, then trains
on its pairs (cached reference, prompt-shared rows).

Each side is its own process (`--worker`), so loading is not timed and neither sees the other's allocations:
  sampling   dpokit's batched sampler (`dpokit.generate.generate`, batch = --sample-batch-size) against plain
             `model.generate` one prompt at a time; tokens/s = answer tokens up to and including EOS / seconds.
  dpokit     `run_iterate`, 1 round; its rounds.jsonl gives the round's sample / judge / train / evaluate seconds.
  trl        `OnlineDPOTrainer.train()`; its generation and reward calls are timed by a subclass, the rest of the
             step (policy and reference forwards, backward, optimizer) is "train".
Judged pairs per minute = pairs trained on / (sample + judge + train seconds) * 60. Not counted: imports, loading the
policy, reference and reward model (TRL: the trainer's constructor), dpokit's held-out evaluation before and after
the round (shown on its own), TRL's end-of-train bookkeeping after the last step.
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HH = ROOT / "src" / "dpokit" / "assets" / "hh_rlhf_harmless_sample.jsonl.gz"
MODEL = "smollm2-135m-instruct"
TURN = "\n\nAssistant:"

FULL = dict(prompts=64, eval_prompts=2, sample_prompts=16, max_new_tokens=64, batch_size=8, sample_batch_size=16,
            reward_steps=4)
QUICK = dict(prompts=4, eval_prompts=1, sample_prompts=4, max_new_tokens=8, batch_size=2, sample_batch_size=4,
             reward_steps=1)


# ---- setup (parent) ---------------------------------------------------------------------------------------------

def hh_prompts(tokenizer, n: int, max_tokens: int) -> list[str]:
    """The first n distinct hh-rlhf prompts (transcript through its last "Assistant:") of at most max_tokens tokens."""
    prompts, seen = [], set()
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        for line in f:
            chosen = json.loads(line)["chosen"]
            prompt = chosen[:chosen.rfind(TURN) + len(TURN)].lstrip()
            if prompt in seen or len(tokenizer(prompt)["input_ids"]) > max_tokens:
                continue
            seen.add(prompt)
            prompts.append(prompt)
            if len(prompts) == n:
                return prompts
    raise SystemExit(f"{HH}: only {len(prompts)} prompts of at most {max_tokens} tokens")


def reward_model(work: Path, model_path: str, steps: int, env: dict) -> Path:
    """A SmolLM2 reward model from a few `dpokit reward` steps on the bundled pairs (made once per --workdir)."""
    final = work / f"reward-{steps}" / "final"
    if not (final / "config.json").is_file():
        subprocess.run([sys.executable, "-m", "dpokit", "reward", "--model", model_path, "--data",
                        "bundled:hh-rlhf-harmless", "--output", str(final.parent), "--max-steps", str(steps),
                        "--batch-size", "2", "--max-length", "512", "--max-prompt-length", "256", "--max-eval-pairs", "4",
                        "--overwrite"],
                       env=env, check=True, stdout=subprocess.DEVNULL)
    return final


def run_worker(name: str, spec: dict, work: Path, env: dict) -> dict:
    """One side in its own process; its result JSON, plus its peak RSS."""
    out = work / f"{name}.json"
    out.unlink(missing_ok=True)
    cache = Path(tempfile.mkdtemp(prefix=f"cache-{name}-", dir=work))  # cold: dpokit computes its reference in-run
    (cache / "gguf").symlink_to(Path(os.environ.get("DPOKIT_CACHE", Path.home() / ".cache" / "dpokit")) / "gguf")
    env = {**env, "DPOKIT_CACHE": str(cache)}
    (work / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
    log = open(work / f"{name}.log", "w", encoding="utf-8")
    started = time.perf_counter()
    proc = subprocess.Popen([sys.executable, __file__, "--worker", name, "--workdir", str(work)], env=env,
                            stdout=log, stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    log.close()
    shutil.rmtree(cache)
    if os.waitstatus_to_exitcode(status) != 0 or not out.is_file():
        tail = (work / f"{name}.log").read_text(encoding="utf-8")[-3000:]
        return {"error": tail.strip().splitlines()[-1] if tail.strip() else "no output", "log": tail}
    return {**json.loads(out.read_text(encoding="utf-8")), "peak_rss_mb": usage.ru_maxrss / 1024,
            "process_s": time.perf_counter() - started}


# ---- workers ----------------------------------------------------------------------------------------------------

def worker_sampling(spec: dict) -> dict:
    import torch

    from dpokit.generate import eos_ids, generate
    from dpokit.models import load_model, load_tokenizer

    tokenizer = load_tokenizer(spec["model"])
    model = load_model(spec["model"], dtype="float32", train=False).eval()
    prompts, new = spec["prompts"][:spec["sample_prompts"]], spec["max_new_tokens"]
    stops = eos_ids(model, tokenizer)
    generate(model, tokenizer, prompts[:2], max_new_tokens=2, temperature=1.0, batch_size=2, template=False)  # warm-up

    started = time.perf_counter()
    drawn = generate(model, tokenizer, prompts, max_new_tokens=new, temperature=1.0, top_p=1.0, seed=0,
                     batch_size=spec["sample_batch_size"], template=False, return_ids=True)
    batched_s = time.perf_counter() - started
    batched_tokens = sum(len(s.completion_ids) for s in drawn)

    torch.manual_seed(0)
    plain_tokens, started = 0, time.perf_counter()
    with torch.no_grad():
        for prompt in prompts:
            batch = tokenizer(prompt, return_tensors="pt")
            out = model.generate(**batch, max_new_tokens=new, do_sample=True, temperature=1.0, top_p=1.0, top_k=None,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=stops)
            answer = out[0, batch["input_ids"].shape[1]:].tolist()
            plain_tokens += next((i + 1 for i, t in enumerate(answer) if t in stops), len(answer))
    plain_s = time.perf_counter() - started
    return {"prompts": len(prompts), "batched": {"tokens": batched_tokens, "seconds": batched_s},
            "plain": {"tokens": plain_tokens, "seconds": plain_s}}


def worker_dpokit(spec: dict) -> dict:
    from dpokit.config import IterateConfig
    from dpokit.eval.files import read_jsonl
    from dpokit.train.iterate import run_iterate

    work = Path(spec["work"])
    config = IterateConfig(
        model=spec["model"], prompts=spec["train_file"], held_out=spec["held_file"], judge=f"hf:{spec['reward']}",
        output=str(work / "dpokit-run"), overwrite=True, rounds=1, samples_per_prompt=2,
        prompts_per_round=len(spec["train_prompts"]), eval_prompts=spec["eval_prompts"], eval_samples=1,
        max_new_tokens=spec["max_new_tokens"], sample_batch_size=spec["sample_batch_size"],
        batch_size=spec["batch_size"], epochs=1.0, learning_rate=spec["learning_rate"], beta=spec["beta"],
        max_grad_norm=spec["max_grad_norm"], max_length=spec["max_length"], max_prompt_length=spec["max_prompt_length"],
        temperature=1.0, top_p=1.0, no_chat_template=True, allow_truncated_chosen=True, probe_prompts=0, seed=0)
    started = time.perf_counter()
    run_iterate(config, quiet=True)
    total = time.perf_counter() - started
    rounds = read_jsonl(work / "dpokit-run" / "rounds.jsonl")
    train_summary = json.loads((work / "dpokit-run" / "round-1" / "train" / "summary.json").read_text())
    one = rounds[1]
    return {"seconds": one["seconds"], "pairs": one["trained_on"], "dropped": one["dropped"],
            "samples": one["samples"], "steps": train_summary["steps"], "step_s": train_summary["train_seconds"],
            "run_iterate_s": total}


def worker_trl(spec: dict) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    timed = {"sample": 0.0, "judge": 0.0}

    class TimedOnlineDPO(OnlineDPOTrainer):
        """OnlineDPOTrainer with its generation and reward calls timed (nothing else changed)."""

        def _generate(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                return super()._generate(*args, **kwargs)
            finally:
                timed["sample"] += time.perf_counter() - started

        def _calculate_rewards_from_functions(self, *args, **kwargs):
            started = time.perf_counter()
            try:
                return super()._calculate_rewards_from_functions(*args, **kwargs)
            finally:
                timed["judge"] += time.perf_counter() - started

    steps = len(spec["train_prompts"]) // spec["batch_size"]
    args = OnlineDPOConfig(
        output_dir=str(Path(spec["work"]) / "trl-run"), per_device_train_batch_size=spec["batch_size"],
        max_steps=steps, learning_rate=spec["learning_rate"], beta=spec["beta"], max_grad_norm=spec["max_grad_norm"],
        lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_new_tokens=spec["max_new_tokens"],
        max_length=spec["max_length"], temperature=1.0, top_p=1.0, top_k=0, gradient_checkpointing=False,
        bf16=False, fp16=False, use_cpu=True, report_to="none", save_strategy="no", logging_steps=steps, seed=0,
        dataloader_num_workers=0, disable_tqdm=True)
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    model = AutoModelForCausalLM.from_pretrained(spec["model"], dtype=torch.float32)
    reward = AutoModelForSequenceClassification.from_pretrained(spec["reward"], num_labels=1, dtype=torch.float32)
    reward_tokenizer = AutoTokenizer.from_pretrained(spec["reward"])
    trainer = TimedOnlineDPO(model=model, reward_funcs=reward, args=args, processing_class=tokenizer,
                             reward_processing_classes=reward_tokenizer,
                             train_dataset=Dataset.from_list([{"prompt": p} for p in spec["train_prompts"]]))
    started = time.perf_counter()
    trainer.train()
    total = time.perf_counter() - started
    return {"seconds": {"sample": timed["sample"], "judge": timed["judge"],
                        "train": total - timed["sample"] - timed["judge"]},
            "pairs": steps * spec["batch_size"], "steps": trainer.state.global_step,
            "optimizer": str(args.optim), "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h]}


WORKERS = {"sampling": worker_sampling, "dpokit": worker_dpokit, "trl": worker_trl}


def worker_main(name: str, work: Path) -> None:
    import torch

    spec = json.loads((work / "spec.json").read_text(encoding="utf-8"))
    torch.set_num_threads(spec["threads"])
    result = WORKERS[name](spec)
    (work / f"{name}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")


# ---- the table (parent) -----------------------------------------------------------------------------------------

def pairs_per_minute(r: dict) -> tuple[float, float]:
    s = r["seconds"]
    timed = s["sample"] + s["judge"] + s["train"]
    return timed, r["pairs"] / timed * 60


def report(spec: dict, results: dict, load: tuple[str, str], versions: str) -> str:
    lines = [f"{versions}. Load average (1 min) {load[0]} before, {load[1]} after.", ""]
    ok = {k: v for k, v in results.items() if "error" not in v}
    for name, r in results.items():
        if "error" in r:
            lines += [f"**{name} failed**: `{r['error']}`", ""]
    lines += ["| side | pairs | steps | sample s | judge s | train s | sample+judge+train s | judged pairs/min "
              "| held-out eval s (not counted) | peak RSS MB |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    labels = {"trl": "TRL OnlineDPOTrainer", "dpokit": "dpokit iterate (1 round)"}
    for name in ("trl", "dpokit"):
        if name in ok:
            r = ok[name]
            s = r["seconds"]
            timed, rate = pairs_per_minute(r)
            evaluate = f"{s['evaluate']:.1f}" if "evaluate" in s else "—"
            lines.append(f"| {labels[name]} | {r['pairs']} | {r['steps']} | {s['sample']:.1f} | {s['judge']:.1f} | "
                         f"{s['train']:.1f} | {timed:.1f} | {rate:.1f} | {evaluate} | {r['peak_rss_mb']:.0f} |")
    if "trl" in ok and "dpokit" in ok:
        ratio = pairs_per_minute(ok["dpokit"])[1] / pairs_per_minute(ok["trl"])[1]
        split = " / ".join(f"{stage} {ok['trl']['seconds'][stage] / ok['dpokit']['seconds'][stage]:.2f}×"
                           for stage in ("sample", "judge", "train"))
        lines += ["", f"**dpokit ÷ TRL judged pairs per minute: {ratio:.2f}×** (target ≥ 2×: "
                      f"{'met' if ratio >= 2 else 'MISSED'}). TRL ÷ dpokit seconds by stage: {split} "
                      "(per pair trained: divide by the pairs column)."]
    if "dpokit" in ok:
        d = ok["dpokit"]
        lines.append(f"dpokit sampled {d['samples']} answers; pairs dropped: {d['dropped'] or 'none'}. Of its train "
                     f"{d['seconds']['train']:.1f} s, {d['step_s']:.1f} s are the optimizer steps (the rest: reading "
                     "and tokenizing the pairs, the reference pass, writing final/). Outside the timed stages, "
                     f"`run_iterate` spent {d['run_iterate_s'] - sum(d['seconds'].values()):.1f} s loading the "
                     "policy and reward model and evaluating round 0.")
    if "sampling" in ok:
        s = ok["sampling"]
        rate = {k: s[k]["tokens"] / s[k]["seconds"] for k in ("batched", "plain")}
        lines += ["", f"| sampler ({s['prompts']} prompts, ≤ {spec['max_new_tokens']} new tokens, temperature 1) "
                      "| answer tokens | seconds | tokens/s |", "|---|---:|---:|---:|",
                  f"| plain `model.generate`, batch 1 | {s['plain']['tokens']} | {s['plain']['seconds']:.1f} | "
                  f"{rate['plain']:.1f} |",
                  f"| dpokit `generate`, batch {spec['sample_batch_size']} | {s['batched']['tokens']} | "
                  f"{s['batched']['seconds']:.1f} | {rate['batched']:.1f} |",
                  "", f"dpokit's batched sampler ÷ plain batch-1 `model.generate`: {rate['batched'] / rate['plain']:.2f}× "
                      "tokens/s."]
    lines += ["", "Settings, both sides: "
              f"SmolLM2-135M-Instruct (float32, CPU, {spec['threads']} threads), {len(spec['train_prompts'])} hh-rlhf "
              f"prompts (plain text, ≤ {spec['max_prompt_tokens']} tokens), K = 2, ≤ {spec['max_new_tokens']} new "
              f"tokens, temperature 1, top-p 1, {spec['batch_size']} pairs per optimizer step, sigmoid DPO β "
              f"{spec['beta']}, learning rate {spec['learning_rate']} linear decay, no warm-up, clip {spec['max_grad_norm']}, "
              f"max_length {spec['max_length']}, no gradient checkpointing, the same reward model folder "
              f"({spec['reward_steps']} steps of `dpokit reward`), generation batch {spec['sample_batch_size']} "
              f"sequences (TRL: {spec['batch_size']} prompts × 2)."]
    if "trl" in ok:
        lines.append(f"TRL: optimizer {ok['trl']['optimizer']}, reference model live every step, every prompt "
                     f"gives a pair (ties kept), losses logged {ok['trl']['losses']}.")
    lines.append("dpokit: samples and judges all prompts first, then trains (cached reference log-probs, "
                 "prompt-shared rows, `--allow-truncated-chosen`, `--probe-prompts 0`); train s includes its "
                 "reference pass and writing final/; ties and identical answers are dropped.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke test: tiny sizes (~1 min)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every worker")
    parser.add_argument("--workdir", default=None, help="default $TMPDIR/dpokit-bench-iterate (reward model kept)")
    parser.add_argument("--runs", default="sampling,dpokit,trl", help="comma-separated: sampling, dpokit, trl")
    parser.add_argument("--worker", choices=sorted(WORKERS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.workdir or Path(tempfile.gettempdir()) / "dpokit-bench-iterate").resolve()
    if args.worker:
        return worker_main(args.worker, work)
    work.mkdir(parents=True, exist_ok=True)
    sizes = QUICK if args.quick else FULL
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}

    from transformers import AutoTokenizer

    from dpokit.models import resolve_model_path

    model_path = str(resolve_model_path(MODEL))  # converted once from the embedded GGUF; not timed
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    max_prompt_tokens = 192
    prompts = hh_prompts(tokenizer, sizes["prompts"] + sizes["eval_prompts"], max_prompt_tokens)
    train, held = prompts[:sizes["prompts"]], prompts[sizes["prompts"]:]
    for name, rows in (("train", train), ("held", held)):
        with open(work / f"{name}.jsonl", "w", encoding="utf-8") as f:
            f.writelines(json.dumps({"prompt": p}) + "\n" for p in rows)
    spec = {**sizes, "work": str(work), "model": model_path, "threads": args.threads, "prompts": prompts,
            "train_prompts": train, "train_file": str(work / "train.jsonl"), "held_file": str(work / "held.jsonl"),
            "learning_rate": 5e-7, "beta": 0.1, "max_grad_norm": 1.0, "max_length": 512, "max_prompt_length": 256,
            "max_prompt_tokens": max_prompt_tokens,
            "reward": str(reward_model(work, model_path, sizes["reward_steps"], env))}

    import torch
    import transformers
    import trl

    versions = (f"{os.cpu_count()} cores, torch {torch.__version__} ({args.threads} threads), transformers "
                f"{transformers.__version__}, trl {trl.__version__}")
    load_before = f"{os.getloadavg()[0]:.2f}"
    results = {}
    for name in args.runs.split(","):
        print(f"bench_iterate: {name} ...", file=sys.stderr, flush=True)
        results[name] = run_worker(name, spec, work, env)
    text = report(spec, results, (load_before, f"{os.getloadavg()[0]:.2f}"), versions)
    (work / "results.md").write_text(text + "\n", encoding="utf-8")
    print(text)


if __name__ == "__main__":
    main()
