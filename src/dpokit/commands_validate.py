"""`dpokit validate PATH`: run the data stage only and print what it found."""
from __future__ import annotations

from collections import Counter

from .data.prepare import resolve_data_path
from .data.tokenize import tokenize_pairs
from .data.validate import format_report, load_pairs


def token_lengths(tokenizer, pairs, max_length: int, max_prompt_length: int | None) -> tuple[dict, Counter]:
    """Untruncated token lengths, and what the given truncation settings would do to these pairs."""
    raw = tokenize_pairs(tokenizer, pairs, max_length=10**9, max_prompt_length=None, skip_invalid=True)
    stats = {"prompt": [len(p.prompt_ids) for p in raw.pairs], "chosen": [len(p.chosen_ids) for p in raw.pairs],
             "rejected": [len(p.rejected_ids) for p in raw.pairs]}
    cut = tokenize_pairs(tokenizer, pairs, max_length=max_length, max_prompt_length=max_prompt_length,
                         skip_invalid=True)
    return stats, cut.counts


def validate_command(args) -> int:
    report = load_pairs(resolve_data_path(args.path), skip_invalid=True)
    stats, counts = None, Counter()
    if not args.no_tokens and report.pairs:
        from .models import EMBEDDED_MODEL, load_tokenizer, resolve_model_path

        tokenizer = load_tokenizer(resolve_model_path(args.model or EMBEDDED_MODEL))
        stats, counts = token_lengths(tokenizer, report.pairs, args.max_length, args.max_prompt_length)
    print(format_report(report, stats))
    if counts:
        print("tokenization (max_length={}, max_prompt_length={}): {}".format(
            args.max_length, args.max_prompt_length, ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"))
    return 0 if not report.problems else 1
