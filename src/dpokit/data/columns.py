"""A user's column mapping: read a row of any shape as the fields dpokit knows.

    --columns prompt=question,chosen=answers[0],rejected=answers[-1]
    --columns prompt=instruction+input,completion=output                (Alpaca-style SFT)
    --columns prompt=instruction,responses=completions[*].response,scores=completions[*].overall_score

Each entry is TARGET=PATH. A path walks into the row: ``a.b`` (a field of an object), ``x[0]`` / ``x[-1]`` (an item of
a list), ``x[*].text`` (that field of every item, giving a list). ``+`` joins several string fields with a blank
line, skipping empty parts (a prompt made of an instruction and its optional input).

The mapped row holds the mapped targets, plus any field the row already has under a target's own name that the
mapping neither fills nor reads from; then the usual shape detection and adapters take it from there, so mapped
and native rows meet the same checks. A path that does not fit a row is a ``RowError`` naming the path.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Mapping

from ..errors import UserError
from .adapters import RowError, _describe

# The fields the adapters read (pairs, ranked lists and SFT examples); a mapping can fill any of them.
TARGETS = ("prompt", "messages", "system", "chosen", "rejected", "margin", "score_chosen", "score_rejected",
           "metadata", "conversations", "input", "preferred_output", "non_preferred_output",
           "responses", "scores", "ranks", "completions", "completion", "instruction", "output")
ALL = "*"  # the step that takes every item of a list
_STEP = re.compile(r"\[\s*(-?\d+|\*)\s*\]")
_NAME = re.compile(r"[^.\[\]=,+]+")


@dataclass(frozen=True)
class FieldPath:
    """One path such as ``answers[0].text``: ``steps`` are field names (str) and list indices (int, or ``ALL``)."""

    text: str
    steps: tuple

    @property
    def top(self) -> str:
        return self.steps[0]


@dataclass(frozen=True)
class ColumnMap:
    """target → the paths joined to fill it (one path, or several joined by ``+``)."""

    entries: tuple[tuple[str, tuple[FieldPath, ...]], ...]

    @property
    def spec(self) -> str:
        """The mapping as one flag value; `parse_columns(m.spec) == m`."""
        return ",".join(f"{target}={'+'.join(p.text for p in paths)}" for target, paths in self.entries)

    def map_row(self, value: Any, origin: str) -> dict:
        """The row as the adapters should see it (see the module docstring)."""
        if not isinstance(value, dict):
            raise RowError(origin, None, f"expected an object with named fields, got {_describe(value)}")
        mapped = {target: _fill(value, target, paths, origin) for target, paths in self.entries}
        read = {p.top for _, paths in self.entries for p in paths}
        for key in TARGETS:  # native fields under their own names still count, unless the mapping used them
            if key in value and key not in mapped and key not in read:
                mapped[key] = value[key]
        return mapped

    def explain(self, error: RowError) -> RowError:
        """A row error about a mapped target, with the user's own path named: "field 'scores[1]' … (scores is
        mapped from 's')"."""
        target = re.split(r"[.\[]", error.field or "", maxsplit=1)[0]
        paths = dict(self.entries).get(target)
        if paths is None or error.detail.startswith("mapped field "):
            return error
        source = "+".join(p.text for p in paths)
        return RowError(error.origin, error.field, f"{error.detail} ({target} is mapped from '{source}')")


def parse_columns(spec: str | Mapping | None, source: str = "--columns") -> ColumnMap | None:
    """``"prompt=question,chosen=a[0]"`` (or the same as a mapping, from YAML) → ColumnMap; None for no mapping."""
    if spec is None or spec == "" or spec == {}:
        return None
    if isinstance(spec, Mapping):
        items = []
        for target, path in spec.items():
            if not isinstance(path, str):
                raise UserError(f"{source}: {target}: the path must be a string such as answers[0], got {path!r}")
            items.append((str(target), path))
    elif isinstance(spec, str):
        items = [_split_entry(entry, source) for entry in spec.split(",") if entry.strip()]
    else:
        raise UserError(f"{source}: expected TARGET=PATH entries, got {spec!r}")
    entries, seen = [], set()
    for target, text in items:
        target = target.strip()
        if target not in TARGETS:
            raise UserError(f"{source}: unknown target {target!r} in {target}={text}; targets: {', '.join(TARGETS)}")
        if target in seen:
            raise UserError(f"{source}: target {target!r} is mapped twice; keep one")
        seen.add(target)
        paths = tuple(parse_path(part, source) for part in text.split("+"))
        if len(paths) > 1 and any(ALL in p.steps for p in paths):
            raise UserError(f"{source}: {target}={text}: a [*] path gives a list and cannot be joined with +")
        entries.append((target, paths))
    return ColumnMap(tuple(entries))


def _split_entry(entry: str, source: str) -> tuple[str, str]:
    target, eq, path = entry.partition("=")
    if not eq or not target.strip() or not path.strip():
        raise UserError(f"{source}: {entry.strip()!r} is not TARGET=PATH (for example prompt=question)")
    return target, path


def parse_path(text: str, source: str = "--columns") -> FieldPath:
    """``a.b[0][-1]`` → steps ("a", "b", 0, -1); ``x[*].y`` → ("x", ALL, "y")."""
    text = text.strip()
    steps: list = []
    for segment in text.split("."):
        segment = segment.strip()
        name = _NAME.match(segment)
        if name is None:
            raise UserError(f"{source}: path {text!r} has an empty field name (write a.b, x[0], x[-1] or x[*].y)")
        steps.append(name.group().strip())
        rest = segment[name.end():]
        while rest:
            step = _STEP.match(rest)
            if step is None:
                raise UserError(f"{source}: path {text!r}: cannot read {rest!r} (an index is [0], [-1] or [*])")
            steps.append(ALL if step.group(1) == ALL else int(step.group(1)))
            rest = rest[step.end():].lstrip()
    if steps.count(ALL) > 1:
        raise UserError(f"{source}: path {text!r} has more than one [*]; one list per path")
    return FieldPath(text, tuple(steps))


def _fill(row: dict, target: str, paths: tuple[FieldPath, ...], origin: str) -> Any:
    if len(paths) == 1:
        return resolve(row, paths[0], target, origin)
    parts = []
    for path in paths:
        part = resolve(row, path, target, origin)
        if part is None:
            continue  # a null part is an empty one
        if not isinstance(part, str):
            raise _bad(origin, path, target, f"must be a string to be joined, got {_describe(part)}")
        if part.strip():
            parts.append(part)
    return "\n\n".join(parts)


def resolve(row: Any, path: FieldPath, target: str, origin: str) -> Any:
    """The value at ``path`` in ``row``; every step that does not fit is a RowError naming the path and the step."""
    value = row
    for n, step in enumerate(path.steps):
        walked = _walked(path.steps[:n])
        if step == ALL:
            if not isinstance(value, list):
                raise _bad(origin, path, target, f"'{walked}' must be a list for [*], got {_describe(value)}")
            rest = FieldPath(path.text, path.steps[n + 1:])
            return [_each(item, rest, path, target, origin, walked, i) for i, item in enumerate(value)]
        value = _step(value, step, walked, path, target, origin)
    return value


def _each(item, rest: FieldPath, path: FieldPath, target: str, origin: str, walked: str, i: int) -> Any:
    value = item
    for n, step in enumerate(rest.steps):
        value = _step(value, step, f"{walked}[{i}]" + _walked(rest.steps[:n], lead=True), path, target, origin)
    return value


def _step(value: Any, step, walked: str, path: FieldPath, target: str, origin: str) -> Any:
    if isinstance(step, int):
        if not isinstance(value, list):
            raise _bad(origin, path, target, f"'{walked}' must be a list to take [{step}], got {_describe(value)}")
        if not -len(value) <= step < len(value):
            raise _bad(origin, path, target, f"'{walked}' has {len(value)} item{'s' * (len(value) != 1)}, so [{step}] does not exist")
        return value[step]
    where = f"'{walked}'" if walked else "the row"
    if not isinstance(value, dict):
        raise _bad(origin, path, target, f"{where} must be an object to take '{step}', got {_describe(value)}")
    if step not in value:
        raise _bad(origin, path, target, f"{where} has no field '{step}'")
    return value[step]


def _walked(steps, lead: bool = False) -> str:
    text = ""
    for step in steps:
        if isinstance(step, int) or step == ALL:
            text += f"[{step}]"
        else:
            text += f".{step}" if text or lead else step
    return text


def _bad(origin: str, path: FieldPath, target: str, why: str) -> RowError:
    separator = " " if why.startswith("must ") else ": "
    return RowError(origin, path.text, f"mapped field '{path.text}' (for {target}){separator}{why}")
