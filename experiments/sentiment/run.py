"""The controlled-sentiment experiment of the DPO paper (§6.1), small and on CPU.

    python experiments/sentiment/run.py [--quick | --tiny --model DIR] [--out DIR] [--work DIR]

Story: ground-truth reward (TF-IDF + LR on aclImdb/train) → prompts (2–8-word prefixes of reviews) → SFT the policy
on review text (dpokit sft) → sample 4 completions per train prompt, best vs worst by the true reward → pairs →
Preferred-FT (dpokit sft on the chosen samples) and DPO at several β (dpokit dpo; reference = the SFT model) →
on held-out test prefixes: mean true reward and KL to the SFT model for every method, best-of-N from SFT samples,
and mean reward at several temperatures → frontier.png, temperatures.md, summary.json in --out.
"""
from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import random
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the experiment's own modules, also when imported from elsewhere

from reward import DATA_DIR, fit_reward, read_reviews  # noqa: E402
from report import redraw, write_results  # noqa: E402
STAMP = "experiment_stamp.json"  # in a run folder: what it was trained from (see train)


@dataclass(frozen=True)
class Sizes:
    classifier_train: int | None  # reviews to fit the reward on (None: all 25,000)
    classifier_test: int | None  # reviews to measure its accuracy on
    sft_examples: int  # review prefixes + continuations for the first SFT
    completion_words: int  # words of review after the prefix in an SFT example
    pair_prompts: int  # train prefixes sampled for preference pairs
    samples_per_prompt: int  # completions per pair prompt; the pair is (highest, lowest) true reward
    eval_prompts: int  # held-out test prefixes
    policy_samples: int  # completions per eval prompt and temperature for each trained policy
    best_of: tuple[int, ...]  # N of best-of-N (SFT samples per eval prompt = the largest N)
    temperatures: tuple[float, ...]
    max_new_tokens: int
    max_length: int  # training: prompt + completion tokens
    batch_size: int  # training examples (pairs) per step
    sft_epochs: float
    sft_lr: float
    pft_lr: float
    dpo_epochs: float
    dpo_lr: float
    betas: tuple[float, ...]
    generate_batch: int


FULL = Sizes(classifier_train=None, classifier_test=None, sft_examples=256, completion_words=24, pair_prompts=192,
             samples_per_prompt=4, eval_prompts=32, policy_samples=3, best_of=(4, 16),
             temperatures=(0.25, 0.5, 0.75, 1.0), max_new_tokens=24, max_length=48, batch_size=8, sft_epochs=1.0,
             sft_lr=5e-5, pft_lr=5e-5, dpo_epochs=1.0, dpo_lr=5e-5, betas=(0.05, 0.1, 0.5), generate_batch=256)
QUICK = replace(FULL, classifier_train=6000, classifier_test=2000, sft_examples=64, pair_prompts=48, eval_prompts=12,
                policy_samples=1, betas=(0.1,))
TINY = replace(QUICK, classifier_train=300, classifier_test=200, sft_examples=16, completion_words=12, pair_prompts=8,
               samples_per_prompt=2, eval_prompts=4, max_new_tokens=8, batch_size=4, sft_lr=1e-3, pft_lr=1e-3,
               dpo_lr=1e-3, generate_batch=64)


# ---- prompts ------------------------------------------------------------------------------------------------------

def split_review(text: str, rng: random.Random, completion_words: int) -> tuple[str, str] | None:
    """A review → (prefix of 2–8 words, the next `completion_words` words, with their leading space)."""
    words = text.split()
    k = rng.randint(2, 8)
    if len(words) < k + completion_words:
        return None
    return " ".join(words[:k]), " " + " ".join(words[k:k + completion_words])


def make_prompts(reviews: list[dict], count: int, rng: random.Random, completion_words: int) -> list[tuple[str, str]]:
    out = []
    for review in reviews:
        split = split_review(review["text"], rng, completion_words)
        if split is not None:
            out.append(split)
        if len(out) == count:
            return out
    raise SystemExit(f"only {len(out)} reviews are long enough for {count} prompts")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return path


# ---- training: dpokit's own commands ------------------------------------------------------------------------------

def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def train(kind: str, output: Path, **settings) -> Path:
    """`dpokit sft` or `dpokit dpo` through the API. A finished run is reused when its stamp matches: the same
    settings, the same data file contents and the same starting model (its own stamp, for a model trained here)."""
    from dpokit.config import DPOConfig, SFTConfig

    config = (SFTConfig if kind == "sft" else DPOConfig)(output=str(output), overwrite=True, eval_fraction=0.0,
                                                         **settings)
    start = Path(config.model).parent / STAMP
    stamp = json.dumps({"config": config.to_dict(), "data": file_digest(Path(config.data)),
                        "model": start.read_text() if start.is_file() else config.model}, sort_keys=True)
    if (output / STAMP).is_file() and (output / STAMP).read_text() == stamp and (output / "final").is_dir():
        print(f"[sentiment] reusing {output} (same settings, data and starting model)", flush=True)
        return output / "final"
    if kind == "sft":
        from dpokit.train.sft import run_sft

        run_sft(config)
    else:
        from dpokit.train.dpo import run_dpo

        run_dpo(config)
    (output / STAMP).write_text(stamp)
    gc.collect()
    return output / "final"


def make_pairs(samples, reward) -> list[dict]:
    """Per prompt: chosen = the sample with the highest true reward, rejected = the lowest (ties and equal texts
    dropped). dpokit's standard plain-text shape: {prompt, chosen, rejected} (+ the scores, for reading)."""
    samples.rewards = reward(samples.texts())
    pairs = []
    for p, prompt in enumerate(samples.prompts):
        rows = list(range(p * samples.n, (p + 1) * samples.n))
        best = max(rows, key=lambda r: samples.rewards[r])
        worst = min(rows, key=lambda r: samples.rewards[r])
        chosen, rejected = samples.completions[best], samples.completions[worst]
        if samples.rewards[best] - samples.rewards[worst] < 1e-3 or chosen.strip() == rejected.strip() \
                or not chosen.strip() or not rejected.strip():
            continue
        pairs.append({"prompt": prompt, "chosen": chosen, "rejected": rejected,
                      "score_chosen": round(float(samples.rewards[best]), 4),
                      "score_rejected": round(float(samples.rewards[worst]), 4)})
    return pairs


# ---- the story ----------------------------------------------------------------------------------------------------

def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="a few minutes: fewer prompts, one β")
    mode.add_argument("--tiny", action="store_true", help="seconds, for tests: needs --model (a tiny model folder)")
    parser.add_argument("--model", default="smollm2-135m-instruct", help="policy to start from (dpokit --model)")
    parser.add_argument("--out", default=None, help="results folder (default experiments/sentiment/results[-quick])")
    parser.add_argument("--work", default=None, help="models and data (default runs/sentiment[-quick]; git-ignored)")
    parser.add_argument("--data-dir", default=str(DATA_DIR), help="folder holding aclImdb/")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest on a busy machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--plot-only", action="store_true", help="redraw frontier.png and temperatures.md from "
                        "--out/summary.json (no training, no sampling)")
    args = parser.parse_args(argv)
    if args.tiny and args.model == "smollm2-135m-instruct":
        parser.error("--tiny needs --model DIR (a tiny random model, as tests/tiny.py makes)")
    return args


def build_prompts(data: Path, train_reviews: list[dict], test_reviews: list[dict], sizes: Sizes, seed: int):
    """(SFT examples as (prefix, continuation), pair prompts, eval prompts): train reviews for the first two, test
    reviews for the last, each from a seeded shuffle of the whole split."""
    rng = random.Random(seed)
    train_pool = read_reviews(data / "train.jsonl.gz") if sizes.classifier_train else list(train_reviews)
    rng.shuffle(train_pool)
    train_prompts = make_prompts(train_pool, sizes.sft_examples + sizes.pair_prompts, rng, sizes.completion_words)
    test_pool = read_reviews(data / "test.jsonl.gz") if sizes.classifier_test else list(test_reviews)
    rng.shuffle(test_pool)
    eval_prompts = [p for p, _ in make_prompts(test_pool, sizes.eval_prompts, rng, sizes.completion_words)]
    return train_prompts[: sizes.sft_examples], [p for p, _ in train_prompts[sizes.sft_examples:]], eval_prompts


def prompts_and_sft(data: Path, train_reviews, test_reviews, sizes: Sizes, args, work: Path):
    """(the SFT model, pair prompts, eval prompts, the training settings every stage shares): prompts from the
    reviews, then `dpokit sft` on prefix → continuation (reused when its stamp matches)."""
    sft_examples, pair_prompts, eval_prompts = build_prompts(data, train_reviews, test_reviews, sizes, args.seed)
    sft_data = write_jsonl(work / "sft.jsonl", [{"prompt": p, "completion": c} for p, c in sft_examples])
    common = {"max_length": sizes.max_length, "max_prompt_length": 16, "batch_size": sizes.batch_size,
              "seed": args.seed, "warmup_steps": 2, "lr_schedule": "linear"}
    sft_model = train("sft", work / "sft", model=args.model, data=str(sft_data), epochs=sizes.sft_epochs,
                      learning_rate=sizes.sft_lr, **common)
    return sft_model, pair_prompts, eval_prompts, common


def sample_pairs(sft_model: Path, prompts: list[str], reward, sizes: Sizes, work: Path, seed: int) -> Path:
    """pairs.jsonl from SFT samples ranked by the true reward; reused while the SFT model and sizes are the same."""
    path, stamp_path = work / "pairs.jsonl", work / "pairs.stamp"
    keys = ("sft_examples", "completion_words", "pair_prompts", "samples_per_prompt", "max_new_tokens", "generate_batch")
    stamp = json.dumps({"sft": (sft_model.parent / STAMP).read_text(), "seed": seed,
                        **{k: getattr(sizes, k) for k in keys}})
    if path.is_file() and stamp_path.is_file() and stamp_path.read_text() == stamp:
        return path
    from dpokit.generate import load_for_generation
    from sampling import sample

    model, tokenizer = load_for_generation(sft_model)
    samples = sample(model, tokenizer, prompts, n=sizes.samples_per_prompt, max_new_tokens=sizes.max_new_tokens,
                     temperature=1.0, seed=seed, batch_size=sizes.generate_batch)
    write_jsonl(path, make_pairs(samples, reward))
    stamp_path.write_text(stamp)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes, label = (TINY, "tiny") if args.tiny else (QUICK, "quick") if args.quick else (FULL, "full")
    suffix = "" if label == "full" else f"-{label}"
    out = Path(args.out or HERE / f"results{suffix}")
    work = Path(args.work or Path("runs") / f"sentiment{suffix}")
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    if args.plot_only:
        return redraw(out)

    import torch

    import dpokit  # noqa: F401  (the offline guarantee, before anything loads)
    from evaluate import evaluate

    torch.set_num_threads(args.threads)
    timings, started = {}, time.time()

    def lap(name: str, since: float) -> float:
        timings[name] = round(time.time() - since, 1)
        print(f"[sentiment] {name}: {timings[name]:.0f} s (total {time.time() - started:.0f} s)", flush=True)
        return time.time()

    t = time.time()
    data = Path(args.data_dir) / "aclImdb"
    train_reviews = read_reviews(data / "train.jsonl.gz", limit=sizes.classifier_train, seed=args.seed)
    test_reviews = read_reviews(data / "test.jsonl.gz", limit=sizes.classifier_test, seed=args.seed)
    reward, reward_info = fit_reward(train_reviews, test_reviews, out / "reward_model.joblib",
                                     max_features=200_000 if label != "tiny" else 5_000)
    print(f"[sentiment] reward classifier: {reward_info['test_accuracy']:.1%} accuracy on "
          f"{reward_info['test_reviews']} test reviews", flush=True)
    t = lap("reward classifier", t)

    sft_model, pair_prompts, eval_prompts, common = prompts_and_sft(data, train_reviews, test_reviews, sizes, args,
                                                                     work)
    t = lap("SFT", t)
    pairs_path = sample_pairs(sft_model, pair_prompts, reward, sizes, work, args.seed)
    pairs = [json.loads(line) for line in pairs_path.read_text(encoding="utf-8").splitlines()]
    t = lap("sample pairs", t)

    models = {"Preferred-FT": train("sft", work / "preferred-ft", model=str(sft_model), data=str(pairs_path),
                                    epochs=sizes.dpo_epochs, learning_rate=sizes.pft_lr, **common)}
    t = lap("Preferred-FT", t)
    steps = math.ceil(len(pairs) / sizes.batch_size * sizes.dpo_epochs)
    checkpointing = {"save_every": max(1, steps // 3), "keep_checkpoints": 3}  # two more frontier points per β
    for beta in sizes.betas:
        models[f"DPO β={beta}"] = train("dpo", work / f"dpo-beta{beta}", model=str(sft_model), data=str(pairs_path),
                                        beta=beta, epochs=sizes.dpo_epochs, learning_rate=sizes.dpo_lr, **common,
                                        **checkpointing)
        t = lap(f"DPO beta={beta}", t)

    evaluation = evaluate(models, sft_model, eval_prompts, reward, sizes, args.seed)
    t = lap("evaluate", t)
    title = (f"IMDb controlled sentiment ({label}): {len(eval_prompts)} test prefixes, {len(pairs)} train pairs, "
             f"{Path(args.model).name}")
    write_results(out, evaluation["methods"], evaluation["checkpoints"], sizes.temperatures, title)
    summary = {"mode": label, "title": title, "model": args.model, "sizes": asdict(sizes), "reward_model": reward_info,
               "pairs": {"count": len(pairs), "mean_score_chosen": float(np.mean([p["score_chosen"] for p in pairs])),
                         "mean_score_rejected": float(np.mean([p["score_rejected"] for p in pairs]))},
               "eval_prompts": len(eval_prompts), "methods": evaluation["methods"],
               "dpo_checkpoints_T1": evaluation["checkpoints"], "examples": evaluation["examples"],
               "timings_s": {**timings, "total": round(time.time() - started, 1)}, "threads": args.threads,
               "command": " ".join(["experiments/sentiment/run.py", *(argv if argv is not None else sys.argv[1:])])}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False), encoding="utf-8")
    print((out / "temperatures.md").read_text(encoding="utf-8"))
    print(f"[sentiment] done in {time.time() - started:.0f} s: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
