"""Iterative DPO against one round of offline DPO on the sentiment task, the IMDb classifier as the judge.

    python experiments/sentiment/iterate.py [--quick] [--out DIR] [--work DIR]

Both start from the experiment's SFT model (run.py's, reused when its stamp matches) with the SFT model as the
reference, judge with the true reward (judge.py), pair best vs worst of K = 4 samples, and judge the same number of
samples on the same training prefixes: `dpokit iterate` 3 rounds × 64 prefixes (each round sampled from the policy
the last round trained) against 1 round × 192 prefixes (all sampled from the SFT model: offline DPO). After every
round: mean true reward and KL to the SFT model on held-out test prefixes → iterate.md, iterate.png, summary.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from reward import DATA_DIR, fit_reward, read_reviews  # noqa: E402
from run import FULL, QUICK, prompts_and_sft, write_jsonl  # noqa: E402

ROUNDS, PER_ROUND, K = 3, 64, 4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the quick run's classifier and SFT model (6,000 "
                        "reviews, 64 SFT examples) instead of the full run's")
    parser.add_argument("--out", default=str(HERE / "results-iterate"))
    parser.add_argument("--work", default=None, help="models and runs (default runs/sentiment[-quick])")
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads (1 when the machine is shared: "
                        "OpenMP threads spinning against another job's slow each other down many times over)")
    parser.add_argument("--fresh", action="store_true", help="start the runs again instead of resuming them")
    args = parser.parse_args(argv)
    sizes = replace(QUICK if args.quick else FULL, pair_prompts=ROUNDS * PER_ROUND, eval_prompts=32)
    work = Path(args.work or ("runs/sentiment-quick" if args.quick else "runs/sentiment"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    import torch

    import dpokit  # noqa: F401  (the offline guarantee first)
    from dpokit.config import IterateConfig
    from dpokit.train.iterate import run_iterate

    torch.set_num_threads(args.threads)
    started, timings = time.time(), {}
    data = Path(DATA_DIR) / "aclImdb"
    train_reviews = read_reviews(data / "train.jsonl.gz", limit=sizes.classifier_train, seed=args.seed)
    test_reviews = read_reviews(data / "test.jsonl.gz", limit=sizes.classifier_test, seed=args.seed)
    reward_path = HERE / ("results-quick" if args.quick else "results") / "reward_model.joblib"
    _, reward_info = fit_reward(train_reviews, test_reviews, reward_path)
    os.environ["SENTIMENT_REWARD"] = str(reward_path)
    sft_model, pair_prompts, eval_prompts, common = prompts_and_sft(data, train_reviews, test_reviews, sizes, args,
                                                                     work)
    timings["classifier and SFT"] = round(time.time() - started, 1)
    prompts = write_jsonl(work / "iterate-prompts.jsonl", [{"prompt": p} for p in pair_prompts])
    held_out = write_jsonl(work / "iterate-held-out.jsonl", [{"prompt": p} for p in eval_prompts])

    runs = {"iterative (3 rounds × 64 prefixes)": (ROUNDS, PER_ROUND), "offline (1 round × 192 prefixes)": (1, 192)}
    results = {}
    for name, (rounds, per_round) in runs.items():
        t = time.time()
        output = work / ("iterate" if rounds > 1 else "offline")
        resume = (output / "config.yaml").is_file() and not args.fresh  # a killed run continues where it stopped
        config = IterateConfig(
            model=str(sft_model), prompts=str(prompts), held_out=str(held_out), eval_prompts=len(eval_prompts),
            judge=f"py:{HERE / 'judge.py'}:positive", rounds=rounds, prompts_per_round=per_round,
            samples_per_prompt=K, eval_samples=4, no_chat_template=True, temperature=1.0,
            allow_truncated_chosen=True,  # continuations are cut at max_new_tokens by design, as in run.py
            max_new_tokens=sizes.max_new_tokens, sample_batch_size=64, beta=0.1, learning_rate=sizes.dpo_lr,
            epochs=sizes.dpo_epochs, output=str(output), resume=resume, overwrite=not resume, save_every=4,
            **common)
        results[name] = run_iterate(config)["rounds"]
        timings[name] = round(time.time() - t, 1)

    write_table(out / "iterate.md", results)
    plot(out / "iterate.png", results)
    summary = {"results": results, "reward_model": reward_info, "sft_model": str(sft_model),
               "held_out_prompts": len(eval_prompts), "samples_per_prompt": K, "eval_samples_per_prompt": 4,
               "judged_training_samples": {name: r * p * K for name, (r, p) in runs.items()},
               "timings_s": {**timings, "total": round(time.time() - started, 1)},
               "command": " ".join(["experiments/sentiment/iterate.py", *(argv if argv is not None else sys.argv[1:])])}
    (out / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    print((out / "iterate.md").read_text(encoding="utf-8"))
    return 0


def write_table(path: Path, results: dict) -> None:
    lines = ["| run | round | pairs | held-out true reward | win rate vs SFT | KL to SFT (nats) | length (tokens) |",
             "|---|---|---|---|---|---|---|"]
    for name, rounds in results.items():
        for h in rounds:
            win = f"{h['win_rate/start']:.3f}" if "win_rate/start" in h else "–"
            lines.append(f"| {name} | {h['round']} | {h.get('pairs', '–')} | {h['reward']:.3f} | {win} | "
                         f"{h['kl']:.2f} | {h['length']:.1f} |")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def plot(path: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for name, rounds in results.items():
        left.plot([h["round"] for h in rounds], [h["reward"] for h in rounds], marker="o", label=name)
        right.plot([h["kl"] for h in rounds], [h["reward"] for h in rounds], marker="o", label=name)
        for h in rounds:
            right.annotate(str(h["round"]), (h["kl"], h["reward"]), textcoords="offset points", xytext=(4, 4))
    left.set(xlabel="round", ylabel="held-out true reward P(positive)", title="reward per round")
    right.set(xlabel="KL to the SFT model (nats)", ylabel="held-out true reward", title="reward against KL (labels: round)")
    left.legend()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
