"""`dpokit iterate` as a story: each round samples from the current policy, judges, pairs, trains DPO on the pairs
(warm-started, the reference fixed at the starting model), and evaluates on held-out prompts.

    OUTPUT/rounds.jsonl                 one line per round (0: the starting model): reward, win rates, KL, length
    OUTPUT/round-R/samples.jsonl        K samples per prompt, with their token ids, seed and whether they ended
    OUTPUT/round-R/judgments.jsonl      one score per sample, appended as judged (a resumed round asks no judgment
                                        twice)
    OUTPUT/round-R/pairs.jsonl          the round's pairs (what `dpokit dpo` trains on, unchanged)
    OUTPUT/round-R/train/               a dpokit dpo run folder (checkpoints, metrics.jsonl, final/)
    OUTPUT/round-R/eval.jsonl           held-out samples of the trained policy with their scores
    OUTPUT/report.png, summary.json     per-round plots and the whole run's figures
    OUTPUT/label-key                    human:PROJECT: this run's part of the key its rounds are added to PROJECT by

Killed anywhere, `--resume` continues: finished rounds are kept, sampling is redone from its seed (same samples),
judging skips what judgments.jsonl holds, training continues from its last checkpoint.

`--judge human:PROJECT` (judges/human.py): a round's samples go to a `dpokit label` project and the run stops
(summary "waiting", exit code 4) until people have judged them; `--resume` then turns their choices into the round's
pairs. Held-out figures are then KL and length only: nobody is asked to judge evaluation samples.
"""
from __future__ import annotations

import dataclasses
import json
import os
import random
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ..config import DPOConfig, IterateConfig, dump_config
from ..data.lists import scored_pairs
from ..errors import UserError
from ..eval.files import read_jsonl, write_jsonl
from ..eval.generation import kl_estimate, win_rate
from ..data.templates import as_chat
from ..generate import eos_ids, generate, read_prompts
from ..judges import Judge, Sample, load_judge
from ..judges.human import HumanJudge, JudgmentsPending
from ..judges.implicit import add_logps
from ..models import EMBEDDED_MODEL, frozen_copy, load_model, load_tokenizer, resolve_model_path
from ..report import write_rounds_html
from .given import Given
from .setup import prepare_run_dir

JUDGE_CHUNK = 8  # prompts judged per call: what a killed run can lose of judging


def split_prompts(prompts: list, config: IterateConfig) -> tuple[list, list]:
    """(held-out, training pool): the first --eval-prompts of --held-out FILE, or of a seeded shuffle of the prompts
    (those never train)."""
    if config.held_out:
        return [p for _, p in read_prompts(config.held_out)][:config.eval_prompts], prompts
    order = list(range(len(prompts)))
    random.Random(config.seed).shuffle(order)
    held = [prompts[i] for i in order[:config.eval_prompts]]
    pool = [prompts[i] for i in order[config.eval_prompts:]]
    if len(pool) < 1:
        raise UserError(f"{config.prompts}: {len(prompts)} prompts leave none to train on after --eval-prompts "
                        f"{config.eval_prompts}")
    return held, pool


def round_prompts(pool: list, config: IterateConfig, round_index: int) -> list:
    """Round r's P prompts: the next P of the pool in a seeded order, wrapping around."""
    n, p = len(pool), config.prompts_per_round
    return [pool[(round_index * p + i) % n] for i in range(p)]


def as_trained(tokenizer, prompt, config: IterateConfig):
    """A text prompt the chat template renders becomes the conversation it stands for (data/templates), kept in the
    pairs as messages, so training sees exactly the tokens sampling saw."""
    return as_chat(tokenizer, prompt, not config.no_chat_template) or prompt


def sample(policy, tokenizer, prompts: list, k: int, config: IterateConfig, seed: int,
           progress: bool = True) -> list[dict]:
    """K samples per prompt, prompt-major, as rows: ids kept, and whether the sample ended (EOS) or was cut off."""
    unique = [as_trained(tokenizer, p, config) for p in prompts]
    flat = [p for p in unique for _ in range(k)]
    stops = set(eos_ids(policy, tokenizer))
    drawn = generate(policy, tokenizer, unique, max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                     top_p=config.top_p, seed=seed, batch_size=config.sample_batch_size, return_ids=True,
                     template=not config.no_chat_template, progress=progress, per_prompt=k)
    return [{"prompt_index": i // k, "sample": i % k, "prompt": prompt, "response": s.text,
             "prompt_ids": list(s.prompt_ids), "response_ids": list(s.completion_ids),
             "ended": bool(s.completion_ids) and s.completion_ids[-1] in stops, "seed": seed}
            for i, (prompt, s) in enumerate(zip(flat, drawn))]


def as_samples(rows: list[dict]) -> list[Sample]:
    return [Sample(r["prompt"], r["response"], tuple(r["prompt_ids"]), tuple(r["response_ids"])) for r in rows]


def read_appended(path: Path) -> list[dict]:
    """The entries of a file appended line by line; a last line torn by a kill mid-write is cut off the file."""
    if not path.is_file():
        return []
    lines = [line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()]
    entries = []
    for n, line in enumerate(lines):
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            if n != len(lines) - 1:
                raise UserError(f"{path}: line {n + 1} is not JSON; the file was changed by hand?") from None
            write_jsonl(path, entries)  # torn: keep what was whole
    return entries


def append_lines(path: Path, entries: list[dict]) -> None:
    """Entries appended at once and fsynced: what was acknowledged survives a kill."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("".join(json.dumps(entry, ensure_ascii=False) + "\n" for entry in entries))
        f.flush()
        os.fsync(f.fileno())


def judge_rows(judge: Judge, rows: list[dict], path: Path, k: int, known: dict | None = None) -> list[float]:
    """A score for every row; what `path` already holds is read back, never asked again. Prompts go to the judge
    whole (a pairwise judge compares a prompt's samples), JUDGE_CHUNK prompts a call, each call appended at once.
    `known`: the file's scores by (prompt index, sample), kept by a caller that appends to one file many times
    (iterate --online); it is read from `path` when None and updated in place."""
    if known is None:
        known = {(entry["prompt_index"], entry["sample"]): entry["score"] for entry in read_appended(path)}
    todo = sorted({r["prompt_index"] for r in rows if (r["prompt_index"], r["sample"]) not in known})
    for start in range(0, len(todo), JUDGE_CHUNK):
        chunk = set(todo[start:start + JUDGE_CHUNK])
        batch = [r for r in rows if r["prompt_index"] in chunk]
        entries = [{"prompt_index": row["prompt_index"], "sample": row["sample"], "score": score}
                   for row, score in zip(batch, judge(as_samples(batch)))]
        append_lines(path, entries)  # each call's judgments survive a kill
        known.update({(e["prompt_index"], e["sample"]): e["score"] for e in entries})
    return [known[(r["prompt_index"], r["sample"])] for r in rows]


def make_pairs(rows: list[dict], scores: list[float], config: IterateConfig, round_index: int,
               name: str | None = None) -> tuple[list, dict]:
    """The round's pairs as dpokit rows, and what was dropped by reason. `name` starts each pair's origin (default
    round-R)."""
    name = name or f"round-{round_index}"
    by_prompt: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        by_prompt.setdefault(row["prompt_index"], []).append(i)
    pairs, dropped = [], {}
    for p, members in sorted(by_prompt.items()):
        empty = [i for i in members if not rows[i]["response"].strip()]
        if empty:  # an empty answer is no answer to train on (dpokit dpo refuses it in a file too)
            dropped["empty"] = dropped.get("empty", 0) + len(empty)
            members = [i for i in members if i not in empty]
        if len(members) < 2:
            continue
        made = scored_pairs(rows[members[0]]["prompt"], [rows[i]["response"] for i in members],
                            [scores[i] for i in members], f"{name}:prompt-{p}", config.pairing,
                            min_gap=config.min_gap, seed=config.seed + round_index,
                            can_win=[rows[i]["ended"] or config.allow_truncated_chosen for i in members])
        for pair in made.pairs:
            # dpokit's standard shape for a text prompt, its conversational shape (answers as assistant turns) else
            answer = (lambda text: text) if isinstance(pair.prompt, str) else \
                (lambda text: [{"role": "assistant", "content": text}])
            prompt = pair.prompt if isinstance(pair.prompt, str) else [dict(m) for m in pair.prompt]
            pairs.append({"prompt": prompt, "chosen": answer(pair.chosen), "rejected": answer(pair.rejected),
                          "margin": pair.strength, "origin": pair.origin})
        for reason, n in made.dropped.items():
            dropped[reason] = dropped.get(reason, 0) + n
    return pairs, dropped


def dpo_config(config: IterateConfig, round_dir: Path, data: Path) -> DPOConfig:
    """The round's `dpokit dpo` settings: the iterate run's own, reading the round's pairs into round-R/train."""
    names = {f.name for f in dataclasses.fields(DPOConfig)}
    values = {k: v for k, v in dataclasses.asdict(config).items() if k in names}
    resume = (round_dir / "train").is_dir() and any((round_dir / "train").glob("checkpoint-*"))
    # the policy is handed over as an object (Given), so `model` stays at its default, as check_given requires
    return DPOConfig(**{**values, "model": EMBEDDED_MODEL, "data": str(data), "output": str(round_dir / "train"),
                        "eval_fraction": 0.0, "resume": resume, "overwrite": not resume})


def evaluate_round(policy, reference, tokenizer, judge: Judge | None, held: list, config: IterateConfig,
                   round_dir: Path, start_rows: list[dict] | None,
                   last_rows: list[dict] | None) -> tuple[dict, list[dict]]:
    """The policy's held-out samples (the same seed every round), judged beside the starting model's and the last
    round's so that a pairwise judge compares them directly; KL to the reference on the policy's own samples.
    Without a judge (human:PROJECT) only KL and length."""
    k = config.eval_samples
    rows = sample(policy, tokenizer, held, k, config, seed=config.seed + 1_000_003)
    samples = as_samples(rows)
    add_logps(samples, policy, reference, tokenizer.pad_token_id, batch_size=config.sample_batch_size)
    metrics = {"kl": kl_estimate(torch.tensor([s.policy_logps for s in samples]),
                                 torch.tensor([s.reference_logps for s in samples])),
               "length": statistics.fmean(len(r["response_ids"]) for r in rows),
               "ended": statistics.fmean(r["ended"] for r in rows)}
    if judge is None:
        return metrics, rows
    groups = [("policy", rows)] + [(name, r) for name, r in (("start", start_rows), ("last", last_rows)) if r]
    combined = [dict(row, sample=g * k + row["sample"]) for g, (_, group) in enumerate(groups) for row in group]
    scores = judge_rows(judge, combined, round_dir / "eval-judgments.jsonl", k * len(groups))
    by_group = {name: scores[g * len(rows):(g + 1) * len(rows)] for g, (name, _) in enumerate(groups)}
    metrics = {"reward": statistics.fmean(by_group["policy"]), **metrics}
    for name in ("start", "last"):  # each group is prompt-major with k per prompt, as win_rate reads them
        if name in by_group:
            metrics[f"win_rate/{name}"] = win_rate(by_group["policy"], by_group[name], k)
    for row, score in zip(rows, by_group["policy"]):
        row["score"] = score
    return metrics, rows


def length_warning(first: dict, now: dict) -> str | None:
    """The known failure of self-judged loops: answers grow while the judge's reward does (Yuan et al. 2024, §3)."""
    if "reward" in now and now["length"] > 1.2 * first["length"] and now["reward"] > first["reward"]:
        return (f"mean length grew from {first['length']:.1f} to {now['length']:.1f} tokens while the judge's reward "
                f"rose from {first['reward']:.3f} to {now['reward']:.3f}: the judge may be rewarding length")
    return None


def implicit_reference(config: IterateConfig):
    """`--judge implicit:DIR`: the model the policy's implicit reward β·(log π − log π_DIR) is taken against, e.g. the
    SFT model a DPO-trained starting model came from. Against the starting model itself every first-round score
    would be 0 (the policy is that model), so plain `implicit` is refused."""
    spec = config.judge.partition(":")[2]
    if not spec:
        raise UserError("--judge implicit needs the model its reward is taken against: implicit:DIR (e.g. the SFT "
                        "model your DPO-trained --model came from); against the starting model every first-round "
                        "score is 0")
    return load_model(resolve_model_path(spec, allow_pickle=config.allow_pickle), dtype=config.dtype or "float32",
                      train=False).eval().requires_grad_(False)


def start_folder(config: IterateConfig) -> Path:
    """The run folder: new (or replaced with --overwrite), or, with --resume, one an iterate run started."""
    run_dir = Path(config.output)
    if config.resume:
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"--resume: {config.output!r} holds no iterate run to continue")
        return run_dir
    run_dir = prepare_run_dir(config)
    dump_config(config, run_dir / "config.yaml")
    return run_dir


@dataclass
class Iteration:
    """One iterate run's fixed parts: settings, folder, prompts, tokenizer, the reference and the judge."""

    config: IterateConfig
    run_dir: Path
    held: list
    pool: list
    tokenizer: object
    reference: object  # the starting model, frozen: DPO's reference (--reference start) and the KL's
    judge_reference: object | None  # implicit:DIR's model; None for other judges
    judge: Judge | None = None
    human: HumanJudge | None = None  # human:PROJECT (then `judge` is None)

    def judge_for(self, policy) -> Judge | None:
        """The judge of a round: fixed, or (implicit:DIR) the policy's own implicit reward; None for people."""
        if self.judge_reference is None:
            return self.judge
        return load_judge("implicit", policy=policy, reference=self.judge_reference, beta=self.config.beta,
                          pad_id=self.tokenizer.pad_token_id, batch_size=self.config.sample_batch_size)

    def eval_rows(self, r: int, folder: str = "round") -> list[dict] | None:
        path = self.run_dir / f"{folder}-{r}" / "eval.jsonl"
        return read_jsonl(path) if path.is_file() else None

    def evaluate(self, policy, r: int, folder: str = "round") -> dict:
        """Round r's held-out figures (round 0: the starting model, the baseline of the others), kept in
        FOLDER-r/ (iterate --online: eval-r/, its r-th evaluation)."""
        round_dir = self.run_dir / f"{folder}-{r}"
        round_dir.mkdir(exist_ok=True)
        metrics, rows = evaluate_round(policy, self.reference, self.tokenizer, self.judge_for(policy), self.held,
                                       self.config, round_dir, self.eval_rows(0, folder) if r else None,
                                       self.eval_rows(r - 1, folder) if r > 1 else None)
        write_jsonl(round_dir / "eval.jsonl", rows)
        return metrics

    def make_round_pairs(self, policy, r: int) -> tuple[list[dict], dict, dict]:
        """Sample (or, resumed, read back), judge and pair round r: (pairs, dropped by reason, seconds by stage)."""
        config, round_dir, started = self.config, self.run_dir / f"round-{r}", time.time()
        round_dir.mkdir(exist_ok=True)
        if (round_dir / "samples.jsonl").is_file():  # resumed after sampling: the same samples, not drawn again
            rows = read_jsonl(round_dir / "samples.jsonl")
        else:
            rows = sample(policy, self.tokenizer, round_prompts(self.pool, config, r - 1), config.samples_per_prompt,
                          config, seed=config.seed * 1_000 + r)
            write_jsonl(round_dir / "samples.jsonl", rows)
        sampled = time.time()
        if self.human is not None:  # JudgmentsPending until people have judged the round
            pairs, dropped = self.human.round_pairs(rows, self.run_dir, r, config)
        else:
            scores = judge_rows(self.judge_for(policy), rows, round_dir / "judgments.jsonl", config.samples_per_prompt)
            pairs, dropped = make_pairs(rows, scores, config, r)
        judged = time.time()
        write_jsonl(round_dir / "pairs.jsonl", pairs)
        seconds = {"sample": sampled - started, "judge": judged - sampled}
        return pairs, {"dropped": dropped, "samples": len(rows),
                       "ended": statistics.fmean(row["ended"] for row in rows)}, seconds

    def train(self, policy, r: int, pairs: list[dict]):
        """DPO on `pairs` (a round-R/train run folder), warm-started from `policy`; returns the trained policy."""
        from .dpo import run_dpo

        if len(pairs) < self.config.batch_size:
            raise UserError(f"round {r}: {len(pairs)} pairs to train on is fewer than --batch-size "
                            f"{self.config.batch_size}; sample more (--samples-per-prompt, --prompts-per-round), lower "
                            "--min-gap, or lower --batch-size")
        round_dir = self.run_dir / f"round-{r}"
        write_jsonl(round_dir / "train-pairs.jsonl", pairs)
        reference = self.reference if self.config.reference == "start" else frozen_copy(policy)
        run = run_dpo(dpo_config(self.config, round_dir, round_dir / "train-pairs.jsonl"), quiet=True,
                      given=Given(model=policy, reference=reference, tokenizer=self.tokenizer))
        return run.model.eval()


def start_iteration(config: IterateConfig) -> tuple[Iteration, object]:
    """The run's fixed parts and the starting model (trainable; the reference is a frozen copy)."""
    kind, _, project = config.judge.partition(":")
    human = HumanJudge.open(project, config.judge) if kind == "human" else None  # a bad path fails before anything
    run_dir = start_folder(config)
    held, pool = split_prompts([p for _, p in read_prompts(config.prompts)], config)
    model_path = resolve_model_path(config.model, allow_pickle=config.allow_pickle)
    tokenizer = load_tokenizer(model_path, trust_remote_code=config.trust_remote_code)
    self_judging = kind == "implicit"  # DICE (Chen et al. 2024): the policy judges itself
    judge = None if self_judging or human else load_judge(config.judge, beta=config.beta,
                                                          pad_id=tokenizer.pad_token_id,
                                                          batch_size=config.sample_batch_size)
    start = load_model(model_path, dtype=config.dtype or "float32", trust_remote_code=config.trust_remote_code,
                       train=True, allow_pickle=config.allow_pickle, attention=config.attention)
    return Iteration(config, run_dir, held, pool, tokenizer, frozen_copy(start),
                     implicit_reference(config) if self_judging else None, judge, human), start


def run_iterate(config: IterateConfig, *, quiet: bool = False) -> dict:
    """Rounds of sample → judge → pair → train → evaluate; returns the run's summary. (--online is train/online.py,
    built on this module's parts; cli.cmd_iterate picks which.)"""
    it, policy = start_iteration(config)
    rounds_path = it.run_dir / "rounds.jsonl"
    history = read_jsonl(rounds_path) if rounds_path.is_file() else []
    finished = {h["round"] for h in history}

    def record(entry: dict) -> None:
        history.append(entry)
        write_jsonl(rounds_path, history)
        if not quiet:
            print(format_round(entry), flush=True)

    if 0 not in finished:
        record({"round": 0, **it.evaluate(policy, 0)})
    if finished - {0}:  # resumed: the last finished round's policy
        policy = load_model(it.run_dir / f"round-{max(finished)}" / "train" / "final", dtype=config.dtype or "float32",
                            train=True, attention=config.attention)
    accumulated: list[dict] = []
    for r in range(1, config.rounds + 1):
        if r in finished:
            accumulated += read_jsonl(it.run_dir / f"round-{r}" / "pairs.jsonl")
            continue
        try:
            pairs, made, seconds = it.make_round_pairs(policy, r)
        except JudgmentsPending as pending:  # people have not judged the round yet: stop here, --resume later
            if not quiet:
                print(pending.line, flush=True)
            return {"rounds": history, "judge": config.judge, "output": str(it.run_dir), "waiting": pending.waiting,
                    "round": r}
        accumulated += pairs
        trained_on = accumulated if config.accumulate else pairs
        started = time.time()
        policy = it.train(policy, r, trained_on)
        seconds["train"] = time.time() - started
        metrics = it.evaluate(policy, r)
        seconds["evaluate"] = time.time() - started - seconds["train"]
        warning = length_warning(history[0], metrics)
        record({"round": r, **metrics, "pairs": len(pairs), "trained_on": len(trained_on), **made,
                "seconds": {k: round(v, 1) for k, v in seconds.items()}, **({"warning": warning} if warning else {})})
    summary = {"rounds": history, "judge": config.judge, "output": str(it.run_dir),
               "final": str(it.run_dir / f"round-{config.rounds}" / "train" / "final")}
    (it.run_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    summary["report"] = str(write_rounds_html(it.run_dir))
    return summary


def format_round(h: dict) -> str:
    wins = "".join(f", win rate vs {name} {h[f'win_rate/{name}']:.3f}" for name in ("start", "last")
                   if f"win_rate/{name}" in h)
    made = f" ({h['pairs']} pairs, dropped {h['dropped'] or 'none'})" if "pairs" in h else " (the starting model)"
    reward = f"reward {h['reward']:.4f}{wins}, " if "reward" in h else ""  # none when people judge (human:PROJECT)
    line = (f"dpokit iterate: round {h['round']}{made}: held-out {reward}KL {h['kl']:.3f}, length {h['length']:.1f} "
            "tokens")
    return line + (f"\n  warning: {h['warning']}" if h.get("warning") else "")
