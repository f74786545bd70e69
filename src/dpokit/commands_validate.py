"""`dpokit validate PATH`: run the data stage only and print what it found."""
from __future__ import annotations

import json
from collections import Counter

from .data.columns import parse_columns
from .data.prepare import resolve_data_path
from .data.tokenize import tokenize_pairs
from .data.validate import FeedbackRows, format_report, load_pairs


def token_lengths(tokenizer, pairs, max_length: int, max_prompt_length: int | None,
                  chat: bool) -> tuple[dict, Counter]:
    """Untruncated token lengths, and what the given truncation settings would do to these pairs."""
    raw = tokenize_pairs(tokenizer, pairs, max_length=10**9, max_prompt_length=None, skip_invalid=True, chat=chat)
    stats = {"prompt": [len(p.prompt_ids) for p in raw.pairs], "chosen": [len(p.chosen_ids) for p in raw.pairs],
             "rejected": [len(p.rejected_ids) for p in raw.pairs]}
    cut = tokenize_pairs(tokenizer, pairs, max_length=max_length, max_prompt_length=max_prompt_length,
                         skip_invalid=True, chat=chat)
    return stats, cut.counts


def first_rows(report) -> list[str]:
    """The first row as the mapping made it, and the first pair with its origin: enough to check a mapping by eye."""
    lines = []
    if report.first_mapped is not None:
        lines.append(f"first row, mapped: {_clip(json.dumps(report.first_mapped, ensure_ascii=False), 400)}")
    if report.pairs:
        pair = report.pairs[0]
        prompt = pair.prompt if isinstance(pair.prompt, str) else json.dumps(pair.prompt, ensure_ascii=False)
        lines += [f"first pair:  {pair.origin}", f"  prompt:    {_clip(prompt)}", f"  chosen:    {_clip(pair.chosen)}",
                  f"  rejected:  {_clip(pair.rejected)}"]
        if pair.strength is not None:
            lines.append(f"  strength:  {pair.strength:g}")
    return lines


def _clip(text: str, limit: int = 120) -> str:
    text = text.replace("\n", "\\n")
    return text if len(text) <= limit else text[:limit] + "…"


def feedback_command(args, columns) -> int:
    """`dpokit validate` on thumbs-up/down rows: shape, counts by label, problems (no token table: pairs only)."""
    from .data.feedback import desirable_count, load_feedback

    report = load_feedback(resolve_data_path(args.path), skip_invalid=True, columns=columns)
    dropped = report.dropped_counts()
    lines = [f"file:        {report.path}", f"shape:       {report.shape}", f"rows:        {report.num_rows}",
             f"examples:    {len(report.examples)} ({desirable_count(report.examples)} desirable, "
             f"{len(report.examples) - desirable_count(report.examples)} undesirable): for --loss kto",
             f"dropped:     {len(report.problems)}" + (f" ({', '.join(f'{k} {v}' for k, v in dropped.items())})"
                                                        if dropped else "")]
    lines += [f"  [{p.kind}] {p.line()}" for p in report.problems[:10]]
    print("\n".join(lines))
    return 0 if not report.problems else 1


def validate_command(args) -> int:
    columns = parse_columns(args.columns)
    try:
        report = load_pairs(resolve_data_path(args.path), skip_invalid=True, columns=columns,
                            pairs=args.pairs or "best-vs-worst")
    except FeedbackRows:
        return feedback_command(args, columns)
    stats, counts = None, Counter()
    if not args.no_tokens and report.pairs:
        from .models import EMBEDDED_MODEL, load_tokenizer, resolve_model_path

        tokenizer = load_tokenizer(resolve_model_path(args.model or EMBEDDED_MODEL))
        stats, counts = token_lengths(tokenizer, report.pairs, args.max_length, args.max_prompt_length,
                                      chat=not args.no_chat_template)
    print(format_report(report, stats))
    if counts:
        print("tokenization (max_length={}, max_prompt_length={}): {}".format(
            args.max_length, args.max_prompt_length, ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "-"))
    print("\n".join(first_rows(report)))
    return 0 if not report.problems else 1
