"""Preference accuracy: does the policy rank each pair's chosen answer above its rejected one, relative to its
reference? `dpokit eval --model M --ref R --data FILE`.

Per pair, with the same data path, truncation and batch layouts as `dpokit dpo`:
    reward(y)  = β · (log π(y|x) − log π_ref(y|x))          (the implicit reward, Rafailov et al. eq. 5)
    margin     = reward(chosen) − reward(rejected)         (`rewards/margins` in training)
    correct    = margin > 0 strictly: a tie counts as wrong, as in training (policy = reference → accuracy 0)
    loss       = −log σ(margin)                            (the DPO loss, eq. 7)
"""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from types import SimpleNamespace

import torch

from ..data.collate import collator
from ..data.columns import parse_columns
from ..data.prepare import reading, resolve_data_path, split_pairs
from ..data.tokenize import tokenize_pairs
from ..data.validate import load_pairs
from ..errors import UserError
from ..logprobs import batch_logps
from ..losses import PairLogps, sigmoid_loss
from ..models import trained_verbatim
from ..types import PreferencePair, TokenizedPair
from .intervals import with_intervals
from .files import ModelPair, default_out, load_models, prepare_out, resolve_models, write_json, write_jsonl

# ---- which pairs ----------------------------------------------------------------------------------------------------

def eval_pairs(models: ModelPair, data: str | None, split: str, skip_invalid: bool, columns: str | None = None,
               pairs: str | None = None) -> tuple[list[PreferencePair], str]:
    """(pairs, data description). `all`: every pair of --data. `heldout` / `train`: the run's by-prompt split, made
    exactly as `dpokit dpo` made it (its seed, eval fraction, eval data, max eval pairs, column mapping and list
    policy; --data, --columns and --pairs replace the run's)."""
    config = models.run_config
    if split == "all":
        data = data or (config.data if config is not None else None)
        if data is None:
            raise UserError("--data is needed (a preference file, or bundled:hh-rlhf-harmless) unless --model is a run")
        read = {"columns": parse_columns(setting(columns, config, "columns", None)),
                "pairs": setting(pairs, config, "pairs", "best-vs-worst")}
        return load_pairs(resolve_data_path(data), skip_invalid=skip_invalid, **read).pairs, data
    if config is None:
        raise UserError(f"--split {split} reproduces a run's split, so --model must be a run folder (config.yaml and "
                        "final/); use --split all with --data FILE for other models")
    given = {"data": data, "columns": columns, "pairs": pairs}
    config = dataclasses.replace(config, **{k: v for k, v in given.items() if v is not None})
    train = load_pairs(resolve_data_path(config.data), skip_invalid=config.skip_invalid, **reading(config)).pairs
    held = load_pairs(resolve_data_path(config.eval_data), skip_invalid=config.skip_invalid,
                      **reading(config)).pairs if config.eval_data else None
    train, held = split_pairs(config, train, held)
    if split == "heldout" and not held:
        raise UserError(f"run {models.run}: no held-out pairs (it trained with eval_fraction 0)")
    return (held if split == "heldout" else train), f"{config.eval_data or config.data} ({split} split)"


# ---- the pure part: log-probs → per-pair rows -----------------------------------------------------------------------

@torch.no_grad()
def pair_logps(model, pairs: list[TokenizedPair], collate, pad_id: int, batch_size: int) -> PairLogps:
    """Summed completion log-probs of every pair, batch by batch, on the model's device (returned on the CPU)."""
    device = next(model.parameters()).device
    parts = []
    for start in range(0, len(pairs), batch_size):
        batch = collate(pairs[start:start + batch_size], pad_id).to(device)
        lp = batch_logps(model, batch)
        parts.append(PairLogps(lp.chosen.float().cpu(), lp.rejected.float().cpu(), lp.chosen_tokens.cpu(),
                               lp.rejected_tokens.cpu()))
    return PairLogps(*(torch.cat([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(PairLogps)))


def pair_rows(pairs: list[TokenizedPair], policy: PairLogps, reference: PairLogps, beta: float) -> list[dict]:
    """One row per pair: rewards, margin, correct, Δ log-probs against the reference, DPO loss."""
    out = sigmoid_loss(policy, reference, beta=beta)
    rows = []
    for i, pair in enumerate(pairs):
        chosen, rejected = float(out.chosen_rewards[i]), float(out.rejected_rewards[i])
        rows.append({"origin": pair.origin, "chosen_reward": chosen, "rejected_reward": rejected,
                     "margin": chosen - rejected, "correct": chosen > rejected, "loss": float(out.losses[i]),
                     "chosen_delta_logps": float(policy.chosen[i] - reference.chosen[i]),
                     "rejected_delta_logps": float(policy.rejected[i] - reference.rejected[i]),
                     "chosen_logps": float(policy.chosen[i]), "rejected_logps": float(policy.rejected[i]),
                     "reference_chosen_logps": float(reference.chosen[i]),
                     "reference_rejected_logps": float(reference.rejected[i]),
                     "chosen_tokens": int(policy.chosen_tokens[i]), "rejected_tokens": int(policy.rejected_tokens[i]),
                     "truncated": pair.truncated})
    return rows


def summarize(rows: list[dict]) -> dict:
    """Means over pairs, under training's metric names."""
    mean = lambda key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    intervals = with_intervals(mean("correct"), [r["margin"] for r in rows], prefix="")
    return {**intervals, "rewards/accuracies": mean("correct"), "rewards/margins": mean("margin"),
            "rewards/chosen": mean("chosen_reward"), "rewards/rejected": mean("rejected_reward"),
            "delta_logps/chosen": mean("chosen_delta_logps"), "delta_logps/rejected": mean("rejected_delta_logps"),
            "logps/chosen": mean("chosen_logps"), "logps/rejected": mean("rejected_logps"), "loss": mean("loss")}


def format_summary(s: dict) -> str:
    lines = [f"dpokit eval: {s['pairs']} pairs of {s['data']}, β = {s['beta']}",
             f"  model     {s['model']}", f"  reference {s['ref']}"]
    labels = {"rewards/accuracies": "reward accuracy", "rewards/margins": "reward margin",
              "rewards/chosen": "reward chosen", "rewards/rejected": "reward rejected",
              "delta_logps/chosen": "Δ log-prob chosen", "delta_logps/rejected": "Δ log-prob rejected",
              "loss": "DPO loss"}
    for key, label in labels.items():
        interval = s.get(key + "_ci")
        lines.append(f"  {label:<22}{s[key]:>10.4f}" + (f"   95% interval {interval[0]:.4f} – {interval[1]:.4f}"
                                                         if interval else ""))
    lines.append(f"  (policy = reference gives accuracy 0, margins 0, loss ln 2 = {math.log(2):.4f}; ties count as "
                 "wrong, as in training)")
    if s.get("tokenization"):
        lines.append(f"  tokenization: {s['tokenization']}")
    lines.append(f"  rows: {s['out']}/pairs.jsonl")
    return "\n".join(lines)


# ---- the command ----------------------------------------------------------------------------------------------------

def setting(given, config, name: str, default):
    """A flag if given, else the run's value (`config`, None when --model is not a run), else the default."""
    if given is not None:
        return given
    return getattr(config, name) if config is not None else default


def uses_chat_template(args) -> bool:
    """Text prompts through the chat template unless --no-chat-template, or --model is a run (or its final/) that
    trained them verbatim (models.trained_verbatim, as generate and chat ask)."""
    return not (args.no_chat_template or trained_verbatim(args.model))


def tokenized_eval_pairs(args, models: ModelPair, tokenizer):
    """(tokenized pairs, data description, tokenization counts) for the flags and the run's settings."""
    config = models.run_config
    max_length = setting(args.max_length, config, "max_length", 512)
    max_prompt_length = setting(args.max_prompt_length, config, "max_prompt_length", 256)
    if max_prompt_length is not None and max_prompt_length >= max_length:
        raise UserError(f"--max-prompt-length {max_prompt_length} must be below --max-length {max_length} to leave "
                        "room for answers")
    skip_invalid = setting(args.skip_invalid or None, config, "skip_invalid", False)
    pairs, data = eval_pairs(models, args.data, args.split, skip_invalid, args.columns, args.pairs)
    report = tokenize_pairs(tokenizer, pairs, max_length=max_length, max_prompt_length=max_prompt_length,
                            skip_invalid=skip_invalid, chat=uses_chat_template(args))
    if not report.pairs:
        raise UserError(f"{data}: no pairs left after tokenization")
    return report.pairs, data, dict(report.counts)


def preference_command(args) -> int:
    models = resolve_models(args.model, args.ref, allow_pickle=args.allow_pickle)
    beta = setting(args.beta, models.run_config, "beta", 0.1)
    if beta <= 0:
        raise UserError(f"--beta must be > 0, got {beta}")
    out = Path(args.output) if args.output else default_out(models, f"eval-{args.split}")
    if out.exists() and out.is_dir() and any(out.iterdir()) and not args.overwrite:
        prepare_out(out, False)  # fail before any model loads
    from ..models import load_tokenizer

    tokenizer = load_tokenizer(models.model_path)
    pairs, data, counts = tokenized_eval_pairs(args, models, tokenizer)  # data problems surface before weights load
    layout = SimpleNamespace(layout=args.layout, tokens_per_row=None,
                             max_length=setting(args.max_length, models.run_config, "max_length", 512))
    policy, reference, tokenizer = load_models(models, dtype=args.dtype, allow_pickle=args.allow_pickle)
    collate = collator(layout)
    policy_lp = pair_logps(policy, pairs, collate, tokenizer.pad_token_id, args.batch_size)
    reference_lp = policy_lp if reference is policy else pair_logps(reference, pairs, collate, tokenizer.pad_token_id,
                                                                    args.batch_size)
    rows = pair_rows(pairs, policy_lp, reference_lp, beta)
    summary = {**summarize(rows), "beta": beta, "model": models.model, "ref": models.ref, "data": data,
               "split": args.split, "tokenization": counts, "out": str(out)}
    prepare_out(out, args.overwrite)
    write_jsonl(out / "pairs.jsonl", rows)
    write_json(out / "summary.json", summary)
    print(format_summary(summary))
    return 0
