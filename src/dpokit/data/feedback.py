"""Unpaired feedback for KTO: thumbs-up / thumbs-down rows, and the mismatched answers its KL estimate needs.

Shape ``unpaired``: {"prompt": text or [msg, ...], "completion": text (or one assistant message), "label": up/down}
where the label is true/false, 1/0, "up"/"down" (also "true"/"false", "yes"/"no", "good"/"bad", any case). A
preference file of any paired shape works too: each pair gives one desirable row (its chosen answer) and one
undesirable row (its rejected answer).

KTO's reference point z₀ is estimated from mismatched (prompt, answer) pairs (Ethayarajh et al. 2024, §4.1). As in
TRL 1.16, each example is given the answer of the example before it (the first gets the last's) once, when the data
is prepared, so the mismatched pairs are fixed token ids: the reference cache keeps their log-probs too. An example
travels as a PreferencePair whose `chosen` is its answer, `rejected` the mismatched answer and `label` its
feedback; the shared layout [prompt | answer | mismatched answer] then gives both log-probs in one forward.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..types import PreferencePair
from .adapters import (RowError, _describe, _messages, _single_assistant, _text, _with_system, detect_shape,
                       text_or_messages)
from .columns import ColumnMap
from .io import read_records
from .validate import LoadReport, Problem, adapted_rows, row_pairs, stop_on_problems

_TRUE = {"true", "1", "up", "yes", "good", "thumbs_up", "👍"}
_FALSE = {"false", "0", "down", "no", "bad", "thumbs_down", "👎"}


@dataclass(frozen=True)
class FeedbackExample:
    prompt: object  # text, or a tuple of chat messages
    completion: str
    desirable: bool
    origin: str


def desirable_count(examples: list[FeedbackExample]) -> int:
    return sum(e.desirable for e in examples)


def is_feedback_label(raw) -> bool:
    """Whether ``raw`` reads as thumbs-up/down (a category label such as "math" does not)."""
    try:
        label_of(raw, "")
    except RowError:
        return False
    return True


def label_of(raw, origin: str) -> bool:
    if isinstance(raw, bool):
        return raw
    if isinstance(raw, (int, float)) and raw in (0, 1):
        return bool(raw)
    if isinstance(raw, str) and raw.strip().lower() in _TRUE | _FALSE:
        return raw.strip().lower() in _TRUE
    raise RowError(origin, "label", f"field 'label' must be true/false, 1/0 or up/down, got {_describe(raw)}")


def to_feedback(value: dict, origin: str) -> FeedbackExample:
    """One ``unpaired`` row → FeedbackExample; type problems are RowErrors naming the field."""
    key = "prompt" if "prompt" in value else "messages" if "messages" in value else None
    if key is None:
        raise RowError(origin, "prompt", "missing field 'prompt' (shape 'unpaired' needs prompt, completion, label)")
    prompt = _with_system(text_or_messages(value, key, origin), value, origin)
    raw = value["completion"]
    if isinstance(raw, str):
        completion = _text(raw, "completion", origin)
    else:
        completion = _single_assistant(_messages(raw, "completion", origin), "completion", origin)
    return FeedbackExample(prompt, completion, label_of(value.get("label"), origin), origin)


def load_feedback(path: str | Path, *, skip_invalid: bool = False, columns: ColumnMap | None = None,
                  pairs: str = "best-vs-worst") -> LoadReport:
    """Every row of ``path`` as feedback: unpaired rows as they are, pairs (or ranked lists, by ``pairs``) in two."""
    records = read_records(path)
    report = LoadReport(str(path), None, [], len(records), columns=columns)  # its examples: the feedback

    def adapt(value, origin: str):
        if detect_shape(value, origin) == "unpaired":
            return "unpaired", [to_feedback(value, origin)]
        shape, found, _ = row_pairs(value, origin, pairs)
        return shape, [e for pair in found for e in split_pair(pair)]

    for _, made in adapted_rows(records, report, columns, adapt):
        for example in made:
            if example.completion.strip():
                report.examples.append(example)
            else:
                report.problems.append(Problem(example.origin, "completion", "the completion is empty",
                                               "empty_completion"))
    stop_on_problems(path, report.problems, report.examples, report.num_rows, "feedback rows", skip_invalid)
    return report


def split_pair(pair: PreferencePair) -> list[FeedbackExample]:
    return [FeedbackExample(pair.prompt, pair.chosen, True, f"{pair.origin} (chosen)"),
            FeedbackExample(pair.prompt, pair.rejected, False, f"{pair.origin} (rejected)")]


def with_mismatched(examples: list[FeedbackExample]) -> list[PreferencePair]:
    """Example i with the answer of example i − 1 (the first with the last's) for the KL estimate.

    [(x1, y1, up), (x2, y2, down), (x3, y3, up)] → (x1, y1 | y3), (x2, y2 | y1), (x3, y3 | y2), labels up, down, up."""
    n = len(examples)
    return [PreferencePair(e.prompt, e.completion, examples[(i - 1) % n].completion, e.origin, None, e.desirable)
            for i, e in enumerate(examples)]
