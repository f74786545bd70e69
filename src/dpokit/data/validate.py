"""Load a file into checked ``PreferencePair``s, and describe what was found.

load → adapt → check. Rows that cannot be adapted, or that adapt to a pair DPO cannot learn from
(an empty answer, identical answers, a repeat of an earlier pair), are problems. By default any
problem stops the load with one line naming the first; ``skip_invalid=True`` drops those rows and
keeps them in the report. Nothing here prints.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dpokit.data.adapters import RowError, detect_shape, to_pair
from dpokit.data.columns import ColumnMap
from dpokit.data.io import read_records
from dpokit.data.lists import list_pairs
from dpokit.errors import DataError
from dpokit.types import PreferencePair

KINDS = ("invalid", "shape", "empty_completion", "identical", "duplicate")
MAX_LISTED = 10


class FeedbackRows(DataError):
    """Unpaired feedback where pairs were expected: a file-level mismatch (the loss, not the row, is wrong)."""


@dataclass(frozen=True)
class Problem:
    """Why one row was dropped. ``message`` omits the origin; ``line()`` puts them together."""

    origin: str
    field: str | None
    message: str
    kind: str  # one of KINDS

    def line(self) -> str:
        return f"{self.origin}: {self.message}"


@dataclass
class LoadReport:
    """What a loader read from one file: the pair loader fills ``pairs``, the SFT and feedback loaders ``examples``
    (a Chain of Hindsight load both: the pairs read and the examples made of them); every loader lists its dropped
    rows."""

    path: str
    shape: str | None  # the file's shape, from its first valid row (None if no row was valid)
    pairs: list[PreferencePair]
    num_rows: int
    problems: list[Problem] = field(default_factory=list)
    columns: ColumnMap | None = None
    first_mapped: dict | None = None  # the first row as the mapping made it (shown by validate)
    pairing: str | None = None  # the list policy, when ranked rows were read
    lists: Counter = field(default_factory=Counter)  # ranked rows read, pairs made, pairs dropped by reason
    examples: list = field(default_factory=list)  # SFT examples, or feedback examples (KTO)

    def dropped_counts(self) -> dict[str, int]:
        return count_dropped(self.problems)

    def list_drops(self) -> dict[str, int]:
        """Pairs the ranked lists did not make, by reason (tie, identical, duplicate)."""
        return {k: v for k, v in sorted(self.lists.items()) if k not in ("rows", "pairs")}


def stop_on_problems(path, problems: list[Problem], kept: list, num_rows: int, what: str, skip_invalid: bool) -> None:
    """The rule of every loader but the pair one: the first problem stops the load (unless ``skip_invalid``), and a
    file with nothing ``kept`` is refused."""
    if problems and not skip_invalid:
        more = f" (and {len(problems) - 1} more problem{'s' * (len(problems) > 2)})" if len(problems) > 1 else ""
        raise DataError(f"{problems[0].line()}{more} (pass --skip-invalid to drop such rows)")
    if not kept:
        raise DataError(f"{path}: no usable {what} in {num_rows} rows")


def count_dropped(problems: list[Problem]) -> dict[str, int]:
    """Dropped rows per problem kind, only the kinds that occurred, in ``KINDS`` order."""
    counts = {kind: sum(p.kind == kind for p in problems) for kind in KINDS}
    return {kind: n for kind, n in counts.items() if n}


def load_pairs(path: str | Path, *, skip_invalid: bool = False, columns: ColumnMap | None = None,
               pairs: str = "best-vs-worst") -> LoadReport:
    """Read, map (``columns``), adapt and check every row of ``path``. File-level errors (bad JSON, ...) always raise.

    Ranked rows become pairs by the ``pairs`` policy (``lists``); their ties and identical answers are dropped and
    counted in ``report.lists``, not problems. With ``skip_invalid=False`` any row problem raises one
    ``DataError`` naming the first problem; with ``skip_invalid=True`` those rows are dropped and listed in
    ``report.problems``.
    """
    records = read_records(path)
    report = LoadReport(str(path), None, [], len(records), columns=columns)
    seen: dict[tuple, str] = {}  # pair key -> origin of the first kept row that had it

    def adapt(value, origin: str):
        if report.first_mapped is None and columns is not None:
            report.first_mapped = value
        shape, made, dropped = row_pairs(value, origin, pairs)
        if shape == "ranked":
            report.pairing = pairs
            report.lists.update({"rows": 1, "pairs": len(made), **dropped})
        return shape, made

    for _, made in adapted_rows(records, report, columns, adapt):
        for pair in made:
            problem = _check(pair, seen)
            if problem is None:
                report.pairs.append(pair)
            else:
                report.problems.append(problem)
    _raise_if_unusable(report, skip_invalid)
    return report


def adapted_rows(records, report, columns: ColumnMap | None, adapt):
    """(record, what ``adapt(value, origin)`` made) for each row that maps and adapts, in the file's shape.

    The loop every loader shares: a RowError becomes an "invalid" problem (naming the user's mapped path), and a row
    of another shape than the file's first valid row a "shape" problem; ``report`` collects problems and the shape."""
    for record in records:
        try:
            value = record.value if columns is None else columns.map_row(record.value, record.origin)
            shape, made = adapt(value, record.origin)
        except RowError as e:
            e = e if columns is None else columns.explain(e)
            report.problems.append(Problem(e.origin, e.field, e.detail, "invalid"))
            continue
        report.shape = report.shape or shape  # the first valid row sets the file's shape
        mixed = _shape_problem(record.origin, shape, report.shape)
        if mixed is not None:
            report.problems.append(mixed)
            continue
        yield record, made


def row_pairs(value, origin: str, policy: str = "best-vs-worst") -> tuple[str, list[PreferencePair], Counter]:
    """(shape, pairs, list drops) of one (already mapped) row: one pair, or the pairs ``policy`` makes of a list."""
    shape = detect_shape(value, origin)
    if shape == "unpaired":
        raise FeedbackRows(f"{origin}: row shape 'unpaired' (prompt, completion, label: thumbs-up/down feedback) fits "
                           "--loss kto; the pair losses need chosen and rejected answers (shapes standard, "
                           "conversational, hh_rlhf, sharegpt, openai or ranked)")
    if shape != "ranked":
        return shape, [to_pair(value, shape, origin)], Counter()
    made = list_pairs(value, origin, policy)
    return shape, made.pairs, made.dropped


def _shape_problem(origin: str, shape: str, file_shape: str) -> Problem | None:
    # Mixed shapes usually mean two files were concatenated by mistake; one shape per file is the contract.
    if shape == file_shape:
        return None
    return Problem(origin, None, f"row shape '{shape}' differs from the file's shape '{file_shape}'", "shape")


def _check(pair: PreferencePair, seen: dict[tuple, str]) -> Problem | None:
    """The first reason DPO cannot learn from ``pair``; records kept pairs in ``seen``."""
    for name in ("chosen", "rejected"):
        if not getattr(pair, name).strip():
            return Problem(pair.origin, name, f"'{name}' completion is empty", "empty_completion")
    if pair.chosen == pair.rejected:
        return Problem(pair.origin, "rejected", "chosen and rejected completions are identical", "identical")
    key = _pair_key(pair)
    if key in seen:
        return Problem(pair.origin, None, f"duplicate of {seen[key]} (same prompt, chosen and rejected)", "duplicate")
    seen[key] = pair.origin
    return None


def _pair_key(pair: PreferencePair) -> tuple:
    prompt = pair.prompt if isinstance(pair.prompt, str) else tuple((m["role"], m["content"]) for m in pair.prompt)
    return (prompt, pair.chosen, pair.rejected)


def _raise_if_unusable(report: LoadReport, skip_invalid: bool) -> None:
    problems = report.problems
    if problems and not skip_invalid:
        if len(problems) == 1:
            hint = "(pass --skip-invalid to drop this row)"
        else:
            hint = (
                f"(and {len(problems) - 1} more {'problem' if len(problems) == 2 else 'problems'}; run "
                f"`dpokit validate {report.path}` to list them, "
                "or pass --skip-invalid to drop these rows)"
            )
        raise DataError(f"{problems[0].line()} {hint}")
    if not report.pairs:
        if not problems:  # every ranked row was a tie
            raise DataError(f"{report.path}: no pairs: the {report.lists['rows']} ranked rows made none "
                            f"({_list_drops(report)}); check the scores or ranks")
        raise DataError(
            f"{report.path}: no valid preference pairs in {report.num_rows} rows; first problem: {problems[0].line()}"
        )


def _list_drops(report: LoadReport) -> str:
    return ", ".join(f"{k} {v}" for k, v in report.list_drops().items()) or "none"


def list_summary(report: LoadReport) -> dict | None:
    """Ranked rows read, pairs made and pairs dropped by reason (for summary.json), or None without ranked rows."""
    if not report.lists:
        return None
    return {"policy": report.pairing, "rows": report.lists["rows"], "pairs": report.lists["pairs"],
            "dropped": report.list_drops()}


def format_report(report: LoadReport, token_stats: dict | None = None) -> str:
    """A human-readable summary: file, shape, counts, dropped rows by kind, the first problems and,
    if given, token-length percentiles from ``{"prompt": [ints], "chosen": [ints], "rejected": [ints]}``."""
    dropped = report.dropped_counts()
    by_kind = ", ".join(f"{kind} {n}" for kind, n in dropped.items())
    lines = [f"file:        {report.path}"]
    if report.columns is not None:
        lines.append(f"columns:     {report.columns.spec}")
    lines += [
        f"shape:       {report.shape or '(none detected)'}",
        f"rows:        {report.num_rows}",
        f"valid pairs: {len(report.pairs)}",
        f"dropped:     {len(report.problems)}" + (f" ({by_kind})" if by_kind else ""),
    ]
    if report.lists:
        lines.append(f"lists:       {report.lists['rows']} ranked rows → {report.lists['pairs']} pairs "
                     f"({report.pairing}); dropped: {_list_drops(report)}")
    if report.problems:
        shown = report.problems[:MAX_LISTED]
        lines.append(f"problems (first {len(shown)} of {len(report.problems)}):")
        lines += [f"  [{p.kind}] {p.line()}" for p in shown]
    if token_stats is not None:
        lines += _token_table(token_stats)
    return "\n".join(lines)


def _token_table(token_stats: dict) -> list[str]:
    lines = [f"{'tokens':<10}{'p50':>8}{'p90':>8}{'p99':>8}{'max':>8}"]
    for name in ("prompt", "chosen", "rejected"):
        lengths = sorted(token_stats.get(name) or [])
        cells = [percentile(lengths, q) for q in (50, 90, 99, 100)]
        lines.append(f"{name:<10}" + "".join(f"{'-' if c is None else c:>8}" for c in cells))
    return lines


def percentile(sorted_values: list[int], q: float) -> int | None:
    """Nearest-rank percentile of already sorted values: the smallest value with at least q% of
    the values at or below it. [1, 2, 3, 4] -> p50 = 2, p90 = 4. None for an empty list."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]
