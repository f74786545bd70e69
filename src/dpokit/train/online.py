"""`dpokit iterate --online` as a story: online AI feedback (OAIF, Guo et al. 2024, Algorithm 1). Every optimizer
step samples K responses to a batch of prompts from the policy as it stands, has the judge score them, pairs them and
takes one DPO step on those pairs; one optimizer and one learning-rate schedule run through all --max-steps steps,
through the one training loop, with a data source that draws each step's pairs when the loop asks for them.

    OUTPUT/samples.jsonl       every step's samples (step, draw, prompt_index, sample, ids, ended), appended and
                               fsynced a draw at a time
    OUTPUT/judgments.jsonl     one score per sample, appended as judged
    OUTPUT/pairs.jsonl         every step's pairs (dpokit's pair rows, with their step and whether they trained)
    OUTPUT/train/              the loop's run folder: checkpoints, metrics.jsonl, final/
    OUTPUT/eval-R/             the R-th held-out evaluation (eval.jsonl, eval-judgments.jsonl); R = 0 is the start
    OUTPUT/rounds.jsonl        one line per evaluation, as `iterate` writes per round, with its step
    OUTPUT/report.png, .html, summary.json

Killed anywhere, `--resume` continues from train/'s last checkpoint. Steps after it are taken again from the same
weights, so their samples are the ones on disk: read back, never drawn or judged again.
"""
from __future__ import annotations

import dataclasses
import json
import random
import statistics
import time
from pathlib import Path

from ..config import IterateConfig, dump_config
from ..data.adapters import detect_shape, to_pair
from ..data.tokenize import tokenize_pairs
from ..errors import UserError
from ..eval.files import read_jsonl, write_jsonl
from ..losses import needs_reference
from ..models import prepare_policy
from ..reference import LiveReference
from ..report import write_rounds_html
from .checkpoint import save_pretrained_atomic
from .iterate import Iteration, append_lines, judge_rows, length_warning, make_pairs, read_appended, sample, start_iteration
from .loop import train_loop
from .objectives import DPOObjective

MAX_DRAWS = 8  # draws of P prompts a step may take to gather --batch-size pairs before it gives up


def draw_prompts(pool: list, config: IterateConfig, step: int, draw: int) -> list:
    """The P prompts of a step's draw: a seeded choice from the pool, wrapping when P exceeds it."""
    order = list(range(len(pool)))
    random.Random(config.seed * 1_000_003 + step * MAX_DRAWS + draw).shuffle(order)
    return [pool[order[i % len(pool)]] for i in range(config.prompts_per_round)]


class OnlineSource:
    """The loop's data source for --online: step s's pairs, drawn from the policy when the loop asks for step s.

    The pool grows in place: step s's --batch-size pairs sit at positions s·B … s·B+B−1 (a resumed run leaves the
    steps before its checkpoint as None; they are never asked for again). A draw samples K responses to P prompts,
    judges and pairs them; draws repeat until B pairs are made, and pairs past B are recorded but not trained on."""

    def __init__(self, it: Iteration, policy):
        self.it, self.policy, self.config = it, policy, it.config
        self.examples: list = []
        self.batch_size = self.config.batch_size
        run_dir = it.run_dir
        self.samples_path, self.judgments_path, self.pairs_path = (run_dir / "samples.jsonl",
                                                                  run_dir / "judgments.jsonl", run_dir / "pairs.jsonl")
        self.drawn: dict[tuple[int, int], dict] = {}  # (step, draw) → {(prompt_index, sample): row}
        for row in read_appended(self.samples_path):
            self.drawn.setdefault((row["step"], row["draw"]), {}).setdefault((row["prompt_index"], row["sample"]), row)
        self.scores = {(e["prompt_index"], e["sample"]): e["score"] for e in read_appended(self.judgments_path)}
        self.paired_steps = {entry["step"] for entry in read_appended(self.pairs_path)}

    def indices(self, step: int) -> list[int]:
        start = step * self.batch_size
        if len(self.examples) < start + self.batch_size:
            self.examples.extend([None] * (start - len(self.examples)))
            self.examples.extend(self.draw_step(step))
        return list(range(start, start + self.batch_size))

    def reached(self, steps: int) -> list[int]:
        raise NotImplementedError("online pairs do not exist before their step: the reference runs live")

    def samples(self, step: int, draw: int) -> list[dict]:
        """A draw's P·K samples: read back when whole on disk, else sampled from the policy and appended."""
        k, p = self.config.samples_per_prompt, self.config.prompts_per_round
        known = self.drawn.get((step, draw), {})
        if len(known) == p * k:
            return sorted(known.values(), key=lambda r: (r["prompt_index"], r["sample"]))
        first = (step * MAX_DRAWS + draw) * p  # prompt indices unique over the run: one judgments file serves all
        was_training = self.policy.training
        self.policy.eval()
        rows = sample(self.policy, self.it.tokenizer, draw_prompts(self.it.pool, self.config, step, draw), k,
                      self.config, seed=self.config.seed * 1_000 + 7_919 * (step * MAX_DRAWS + draw + 1),
                      progress=False)  # the loop's bar shows the steps
        self.policy.train(was_training)
        rows = [{"step": step, "draw": draw, **row, "prompt_index": first + row["prompt_index"]} for row in rows]
        append_lines(self.samples_path, rows)
        self.drawn[(step, draw)] = {(r["prompt_index"], r["sample"]): r for r in rows}
        return rows

    def draw_step(self, step: int) -> list:
        """Step s's B tokenized pairs, from as many draws as it takes (at most MAX_DRAWS)."""
        config, made, rows_made, dropped = self.config, [], [], {}
        for draw in range(MAX_DRAWS):
            rows = self.samples(step, draw)
            scores = judge_rows(self.it.judge_for(self.policy), rows, self.judgments_path, config.samples_per_prompt,
                                known=self.scores)
            pairs, gone = make_pairs(rows, scores, config, step, name=f"step-{step}.{draw}")
            for reason, n in gone.items():
                dropped[reason] = dropped.get(reason, 0) + n
            for row in pairs:  # one at a time: --skip-invalid may drop one, and the record says which trained
                tokenized = self.tokenize([row])
                made += tokenized
                rows_made.append({**row, "step": step, "trained": bool(tokenized) and len(made) <= self.batch_size})
            if len(made) >= self.batch_size:
                break
        else:
            raise UserError(f"step {step}: {MAX_DRAWS} draws of {config.prompts_per_round} prompts made "
                            f"{len(made)} pairs, fewer than --batch-size {self.batch_size} (dropped: {dropped}); "
                            "raise --prompts-per-round or --samples-per-prompt, lower --min-gap, or lower --batch-size")
        if step not in self.paired_steps:
            append_lines(self.pairs_path, rows_made)
            self.paired_steps.add(step)
        return made[:self.batch_size]

    def drawn_between(self, first: int, stop: int) -> tuple[int, float]:
        """(draws, the judge's mean score of their samples) of steps first … stop−1, as on disk."""
        draws = [rows for (step, _), rows in self.drawn.items() if first <= step < stop]
        scores = [self.scores[key] for rows in draws for key in rows]
        return len(draws), statistics.fmean(scores) if scores else float("nan")

    def tokenize(self, rows: list[dict]) -> list:
        """Pair rows → token ids, through the same adapter and truncation policy as `dpokit dpo` reading them."""
        pairs = [to_pair(row, detect_shape(row, row["origin"]), row["origin"]) for row in rows]
        return tokenize_pairs(self.it.tokenizer, pairs, max_length=self.config.max_length,
                              max_prompt_length=self.config.max_prompt_length, skip_invalid=self.config.skip_invalid,
                              chat=not self.config.no_chat_template).pairs


class Evaluations:
    """The held-out evaluation every --eval-every steps and at the last (a loop callback), into rounds.jsonl; an
    evaluation a killed run already recorded is kept, not taken again."""

    def __init__(self, it: Iteration, policy, source: OnlineSource, steps: int, quiet: bool):
        self.it, self.policy, self.source, self.steps, self.quiet = it, policy, source, steps, quiet
        self.path = it.run_dir / "rounds.jsonl"
        self.history = read_jsonl(self.path) if self.path.is_file() else []

    def on_step(self, record: dict) -> None:
        step, every = record["step"], self.it.config.eval_every
        if step == self.steps or (every and step % every == 0):
            self.evaluate(step)

    def evaluate(self, step: int) -> None:
        if any(h["step"] == step for h in self.history):
            return
        started, was_training = time.time(), self.policy.training
        self.policy.eval()
        metrics = self.it.evaluate(self.policy, len(self.history), folder="eval")
        self.policy.train(was_training)
        entry = {"round": len(self.history), "step": step, **metrics, "pairs": step * self.it.config.batch_size}
        if self.history:  # the training samples since the last evaluation: how many draws, the judge's mean score
            entry["draws"], entry["sample_reward"] = self.source.drawn_between(self.history[-1]["step"], step)
        warning = length_warning(self.history[0], metrics) if self.history else None
        entry["seconds"] = {"evaluate": round(time.time() - started, 1)}
        if warning:
            entry["warning"] = warning
        self.history.append(entry)
        write_jsonl(self.path, self.history)
        if not self.quiet:
            print(format_evaluation(entry), flush=True)


def format_evaluation(h: dict) -> str:
    win = f", win rate vs start {h['win_rate/start']:.3f}" if "win_rate/start" in h else ""
    line = (f"dpokit iterate --online: step {h['step']}: held-out reward {h['reward']:.4f}{win}, KL {h['kl']:.3f}, "
            f"length {h['length']:.1f} tokens")
    return line + (f"\n  warning: {h['warning']}" if h.get("warning") else "")


def run_online(config: IterateConfig, *, quiet: bool = False) -> dict:
    """--max-steps steps of sample → judge → pair → one DPO step, evaluated on held-out prompts; returns the
    summary."""
    from .iterate import dpo_config

    it, start = start_iteration(config)
    policy = prepare_policy(start, config, None)  # LoRA adapters and gradient checkpointing, as a dpo run's
    train = dpo_config(config, it.run_dir, it.run_dir / "pairs.jsonl")
    # resumed before the first checkpoint, the loop starts at step 0 and cuts metrics.jsonl back to it
    train = dataclasses.replace(train, resume=config.resume, overwrite=False)
    train_dir = Path(train.output)
    train_dir.mkdir(exist_ok=True)
    dump_config(train, train_dir / "config.yaml")
    source = OnlineSource(it, policy)
    evaluations = Evaluations(it, policy, source, config.max_steps, quiet)
    evaluations.evaluate(0)  # the starting model
    final = train_dir / "final"
    if not (final.is_dir() and any(h["step"] == config.max_steps for h in evaluations.history)):
        # a cached reference cannot know pairs drawn later: the frozen starting model runs live
        reference = LiveReference(it.reference, lean=not config.full_logits) if needs_reference(config.loss) else None
        result = train_loop(policy, DPOObjective(reference, train), it.tokenizer, source, [], train, train_dir,
                            callbacks=[evaluations])
        save_pretrained_atomic(result.model, it.tokenizer, final, result.state_dict)
    summary = {"online": True, "steps": config.max_steps, "rounds": evaluations.history, "judge": config.judge,
               "output": str(it.run_dir), "final": str(final)}
    (it.run_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    summary["report"] = str(write_rounds_html(it.run_dir))
    return summary
