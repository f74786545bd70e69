"""load → validate → split by prompt → tokenize: everything between a path and token ids."""
from __future__ import annotations

import json
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..types import PreferencePair, TokenizedPair
from .columns import parse_columns
from .templates import has_template
from .tokenize import tokenize_examples, tokenize_pairs
from .validate import list_summary, load_pairs

BUNDLED_PREFIX = "bundled:"
BUNDLED = {"hh-rlhf-harmless": "hh_rlhf_harmless_sample.jsonl.gz"}


def resolve_data_path(spec: str) -> Path:
    """`bundled:NAME` → the sample shipped in the package; anything else is a local path."""
    if spec.startswith(BUNDLED_PREFIX):
        name = spec[len(BUNDLED_PREFIX):]
        if name not in BUNDLED:
            raise UserError(f"no bundled dataset {name!r}; bundled: {', '.join(BUNDLED)}")
        return Path(__file__).resolve().parent.parent / "assets" / BUNDLED[name]
    try:
        return Path(spec).expanduser()
    except RuntimeError:  # "~nosuchuser/..."
        raise UserError(f"data path {spec!r}: cannot expand '~' (no such user)") from None


def reading(config) -> dict:
    """How a run reads its rows (a column mapping, a list policy), as keyword arguments of the loaders."""
    return {"columns": parse_columns(config.columns, "config: columns"), "pairs": config.pairs}


def file_summary(path: str, report) -> dict:
    """What summary.json says of any loaded file: shape, rows, dropped rows by kind, and the mapping if any."""
    summary = {"path": path, "shape": report.shape, "rows": report.num_rows, "dropped": report.dropped_counts()}
    if report.columns is not None:
        summary["columns"] = report.columns.spec
    return summary


def data_summary(path: str, report) -> dict:
    """A pair file's summary: the file's, and what its ranked lists made."""
    summary = file_summary(path, report)
    lists = list_summary(report)
    if lists is not None:
        summary["lists"] = lists
    return summary


def prompt_key(pair: PreferencePair) -> str:
    return pair.prompt if isinstance(pair.prompt, str) else json.dumps(pair.prompt, sort_keys=True)


def split_by_prompt(pairs: list[PreferencePair], fraction: float, seed: int):
    """Hold out a seeded `fraction` of distinct prompts, so no prompt is in both train and eval."""
    prompts = sorted({prompt_key(p) for p in pairs})
    random.Random(seed).shuffle(prompts)
    held = set(prompts[: round(len(prompts) * fraction)])
    train = [p for p in pairs if prompt_key(p) not in held]
    held_out = [p for p in pairs if prompt_key(p) in held]
    return train, held_out


@dataclass
class PreparedData:
    train: list[TokenizedPair]
    eval: list[TokenizedPair]
    summary: dict = field(default_factory=dict)


def split_pairs(config, train_pairs: list[PreferencePair], eval_pairs: list[PreferencePair] | None):
    """Held-out pairs: the given ones, else a by-prompt split of the training pairs (--eval-fraction)."""
    if eval_pairs is None:
        fraction = 0.1 if config.eval_fraction is None else config.eval_fraction
        train_pairs, eval_pairs = split_by_prompt(train_pairs, fraction, config.seed) if fraction > 0 else (train_pairs, [])
    if config.max_eval_pairs is not None:
        eval_pairs = eval_pairs[: config.max_eval_pairs]
    return train_pairs, eval_pairs


def chat_template_used(config, tokenizer) -> bool:
    """Whether the run's text prompts go through the chat template (recorded in summary.json as `chat_template`)."""
    return has_template(tokenizer) and not config.no_chat_template


def tokenize_splits(config, tokenizer, train_pairs, eval_pairs, summary: dict | None = None) -> PreparedData:
    summary = dict(summary or {}, chat_template=chat_template_used(config, tokenizer))
    counts: Counter = Counter()
    tokenized = {}
    for name, pairs in (("train", train_pairs), ("eval", eval_pairs)):
        report = tokenize_pairs(tokenizer, pairs, max_length=config.max_length,
                                max_prompt_length=config.max_prompt_length, skip_invalid=config.skip_invalid,
                                chat=not config.no_chat_template)
        tokenized[name] = report.pairs
        counts.update({f"{name}/{k}": v for k, v in report.counts.items()})
    if not tokenized["train"]:
        raise UserError(f"{config.data}: no training pairs left after validation and tokenization")
    summary["tokenization"] = dict(counts)
    summary["pairs"] = {"train": len(tokenized["train"]), "eval": len(tokenized["eval"])}
    return PreparedData(tokenized["train"], tokenized["eval"], summary)


def feedback_summary(path: str, report) -> dict:
    """A feedback file's summary: the file's, and its thumbs-up and thumbs-down counts."""
    from .feedback import desirable_count

    up = desirable_count(report.examples)
    return {**file_summary(path, report), "feedback": {"desirable": up, "undesirable": len(report.examples) - up}}


def load_both(config, load, describe) -> tuple:
    """(train report, held-out report or None, summary) of --data and --eval-data, read the run's way."""
    read = reading(config)
    train = load(resolve_data_path(config.data), skip_invalid=config.skip_invalid, **read)
    summary = {"data": describe(config.data, train)}
    held = None
    if config.eval_data:
        held = load(resolve_data_path(config.eval_data), skip_invalid=config.skip_invalid, **read)
        summary["eval_data"] = describe(config.eval_data, held)
    return train, held, summary


def prepare_feedback_data(config, tokenizer) -> PreparedData:
    """KTO's data: feedback rows (or pairs split in two) → by-prompt split → each with a mismatched answer → ids."""
    from .feedback import load_feedback, with_mismatched

    train_report, eval_report, summary = load_both(config, load_feedback, feedback_summary)
    train, held_out = split_pairs(config, train_report.examples, eval_report.examples if eval_report else None)
    if len(train) < 2:
        raise UserError(f"{config.data}: kto needs at least 2 training examples (its reference point compares "
                        "each prompt with another example's answer)")
    return tokenize_splits(config, tokenizer, with_mismatched(train), with_mismatched(held_out) if held_out else [],
                           summary)


def prepare_preference_data(config, tokenizer) -> PreparedData:
    """The data half of a DPO run: every problem surfaces here, before any model is loaded."""
    from ..losses import is_feedback_loss

    if is_feedback_loss(config.loss):
        return prepare_feedback_data(config, tokenizer)
    train_report, eval_report, summary = load_both(config, load_pairs, data_summary)
    train_pairs, eval_pairs = split_pairs(config, train_report.pairs, eval_report.pairs if eval_report else None)
    return tokenize_splits(config, tokenizer, train_pairs, eval_pairs, summary)


def load_sft_file(config, path: str, coh: bool = False):
    """SFT examples of one file, or (`coh`: a Chain of Hindsight run, config.positive/negative its phrases) the
    examples made of its pairs."""
    from .sft import load_coh_examples, load_sft_examples

    read = reading(config)
    if coh:
        return load_coh_examples(resolve_data_path(path), config.positive, config.negative,
                                 skip_invalid=config.skip_invalid, **read)
    return load_sft_examples(resolve_data_path(path), skip_invalid=config.skip_invalid, columns=read["columns"])


def prepare_sft_data(config, tokenizer, coh: bool = False):
    """Examples → held-out split by prompt → token ids with a loss mask; every data problem surfaces here."""
    report = load_sft_file(config, config.data, coh)
    summary = {"data": file_summary(config.data, report), "chat_template": chat_template_used(config, tokenizer)}
    eval_examples = load_sft_file(config, config.eval_data, coh).examples if config.eval_data else None
    train, held_out = split_pairs(config, report.examples, eval_examples)
    counts, tokenized = Counter(), {}
    for name, examples in (("train", train), ("eval", held_out)):
        tokenized[name], c = tokenize_examples(tokenizer, examples, max_length=config.max_length,
                                               max_prompt_length=config.max_prompt_length,
                                               skip_invalid=config.skip_invalid, chat=not config.no_chat_template)
        counts.update({f"{name}/{k}": v for k, v in c.items()})
    if not tokenized["train"]:
        raise UserError(f"{config.data}: no training examples left after validation and tokenization")
    summary["tokenization"] = dict(counts)
    summary["examples"] = {"train": len(tokenized["train"]), "eval": len(tokenized["eval"])}
    return tokenized["train"], tokenized["eval"], summary
