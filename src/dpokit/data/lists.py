"""Ranked and scored lists → preference pairs, by a named policy.

A ``ranked`` row has a prompt and N ≥ 2 answers with an order of preference:
  {"prompt": ..., "responses": [a, b, c], "scores": [7, 9, 2]}      higher score is better
  {"prompt": ..., "responses": [a, b, c], "ranks": [2, 1, 3]}       rank 1 is best; ranks must be distinct
  {"prompt": ..., "responses": [a, b, c]}                           preferred first: a over b over c
  {"instruction": ..., "completions": [{"response": a, "overall_score": 7}, ...]}   UltraFeedback's own rows
The prompt is "prompt" (text or chat messages), "messages" or "instruction"; an answer is a string or one
assistant message; a completion object holds its text in "response" (or "text", "content") and its score in
"overall_score" (or "score") or its rank in "rank".

Policies, worked on responses [a, b, c] with scores [7, 9, 2]:
  best-vs-worst (default)  b over c                              one pair per row
  best-vs-each             b over a, b over c                    the best against every other answer
  all-pairs                b over a, a over c, b over c          every two answers that differ in score
  random-pair              one of the above pairs, drawn by a seed  (OAIF, Guo et al. 2024: one random pair a prompt)
Answers with equal scores make no pair (a tie); two answers with the same text make none either; both are
dropped and counted, never an error. Sampled lists (`dpokit iterate`) may also ask for a minimum score gap (smaller
gaps dropped as "small_gap") and mark answers that may be rejected but never chosen (cut off before their end:
"truncated"). A pair's preference ``strength`` is its score gap (for `odpo`); ranks and
preferred-first lists carry none. Each pair's origin names the two answers: "uf.jsonl:7 (responses[1] over responses[2])".
"""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ..types import PreferencePair
from .adapters import RowError, _describe, _messages, _number, _text, text_or_messages

POLICIES = ("best-vs-worst", "best-vs-each", "all-pairs", "random-pair")
_PROMPT_KEYS = ("prompt", "messages", "instruction")
_TEXT_KEYS = ("response", "text", "content")
_SCORE_KEYS = ("overall_score", "score")


@dataclass
class Ranked:
    """One row's answers in list order, each with a score where higher is preferred."""

    prompt: Any
    answers: list[str]
    scores: list[float]  # higher is better; ranks are stored negated, preferred-first as -position
    has_gap: bool  # True when scores are real scores (their gap is the pair's preference strength)
    field: str


@dataclass
class ListPairs:
    pairs: list[PreferencePair]
    dropped: Counter = field(default_factory=Counter)  # "tie", "identical" → count


def list_pairs(value: dict, origin: str, policy: str = "best-vs-worst") -> ListPairs:
    """Every pair ``policy`` makes from one ranked row (see the module docstring)."""
    ranked = read_ranked(value, origin)
    return scored_pairs(ranked.prompt, ranked.answers, ranked.scores, origin, policy,
                        has_gap=ranked.has_gap, field=ranked.field)


def scored_pairs(prompt, answers: list[str], scores: list[float], origin: str, policy: str = "best-vs-worst", *,
                 has_gap: bool = True, field: str = "responses", min_gap: float = 0.0,
                 can_win: list[bool] | None = None, seed: int = 0) -> ListPairs:
    """The pairs ``policy`` makes of answers with scores (higher is better).

    ``min_gap``: pairs whose scores differ by less are dropped ("small_gap"). ``can_win``: answers marked False may
    be rejected but are never chosen ("truncated" when that drops a pair). ``seed``: random-pair's draw, with the
    origin (the same list draws the same pair)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown pairing policy {policy!r}; expected one of {POLICIES}")
    can_win = can_win or [True] * len(answers)
    out = ListPairs([])
    if not any(can_win):
        out.dropped["truncated"] += 1
        return out
    seen = set()
    for i, j in _candidates(scores, policy, can_win, random.Random(f"{seed}|{origin}")):
        if scores[i] == scores[j]:
            out.dropped["tie"] += 1
            continue
        if scores[i] < scores[j]:
            i, j = j, i
        chosen, rejected = answers[i], answers[j]
        if chosen == rejected:
            out.dropped["identical"] += 1
            continue
        if not can_win[i]:
            out.dropped["truncated"] += 1
            continue
        if scores[i] - scores[j] < min_gap:
            out.dropped["small_gap"] += 1
            continue
        if (chosen, rejected) in seen:  # two copies of one answer in the list
            out.dropped["duplicate"] += 1
            continue
        seen.add((chosen, rejected))
        strength = scores[i] - scores[j] if has_gap else None
        where = f"{origin} ({field}[{i}] over {field}[{j}])"
        out.pairs.append(PreferencePair(prompt, chosen, rejected, where, strength))
    return out


def best_answer(value: dict, origin: str) -> tuple[Any, str]:
    """(prompt, the preferred answer) of a ranked row, the first of the best on ties (SFT on a ranked file)."""
    ranked = read_ranked(value, origin)
    best = max(range(len(ranked.answers)), key=lambda k: (ranked.scores[k], -k))
    return ranked.prompt, ranked.answers[best]


def _candidates(scores: list[float], policy: str, can_win: list[bool], rng: random.Random) -> list[tuple[int, int]]:
    n = len(scores)
    if policy == "all-pairs":
        return [(i, j) for i in range(n) for j in range(i + 1, n)]
    if policy == "random-pair":
        return [tuple(rng.sample(range(n), 2))]
    best = max((k for k in range(n) if can_win[k]), key=lambda k: (scores[k], -k))  # the first of the best
    if policy == "best-vs-each":
        return [(best, j) for j in range(n) if j != best]
    # the last of the worst, never `best` itself (even when all tie)
    worst = min((k for k in range(n) if k != best), key=lambda k: (scores[k], -k))
    return [(best, worst)]


def read_ranked(value: dict, origin: str) -> Ranked:
    prompt = _prompt(value, origin)
    if "completions" in value and "responses" not in value:
        return _completion_objects(value, prompt, origin)
    answers = _answers(value.get("responses"), "responses", origin)
    has_scores, has_ranks = value.get("scores") is not None, value.get("ranks") is not None
    if has_scores and has_ranks:
        raise RowError(origin, "ranks", "give 'scores' or 'ranks' for one list, not both")
    if has_scores:
        scores = _numbers(value["scores"], "scores", len(answers), origin)
        return Ranked(prompt, answers, scores, True, "responses")
    if has_ranks:
        ranks = _numbers(value["ranks"], "ranks", len(answers), origin)
        _distinct(ranks, "ranks", origin)
        return Ranked(prompt, answers, [-r for r in ranks], False, "responses")
    return Ranked(prompt, answers, [-float(k) for k in range(len(answers))], False, "responses")


def _prompt(value: dict, origin: str):
    key = next((k for k in _PROMPT_KEYS if k in value), None)
    if key is None:
        raise RowError(origin, "prompt", "missing field 'prompt' (a ranked list needs prompt, messages or "
                                         "instruction, and responses or completions)")
    return text_or_messages(value, key, origin)


def _answers(raw: Any, key: str, origin: str) -> list[str]:
    if not isinstance(raw, list):
        raise RowError(origin, key, f"field '{key}' must be a list of answers, got {_describe(raw)}")
    if len(raw) < 2:
        raise RowError(origin, key, f"field '{key}' has {len(raw)} answer{'s' * (len(raw) != 1)}; a ranked list "
                                    "needs at least 2 to make a pair")
    return [_answer(item, f"{key}[{i}]", origin) for i, item in enumerate(raw)]


def _answer(item: Any, field: str, origin: str) -> str:
    if isinstance(item, dict):  # one assistant message
        message = _messages([item], field, origin)[0]
        if message["role"] != "assistant":
            raise RowError(origin, f"{field}.role", f"field '{field}.role' must be 'assistant', got {message['role']!r}")
        return message["content"]
    return _text(item, field, origin)


def _completion_objects(value: dict, prompt, origin: str) -> Ranked:
    raw = value["completions"]
    if not isinstance(raw, list):
        raise RowError(origin, "completions", f"field 'completions' must be a list of objects, got {_describe(raw)}")
    if len(raw) < 2:
        raise RowError(origin, "completions", f"field 'completions' has {len(raw)} item{'s' * (len(raw) != 1)}; a "
                                              "ranked list needs at least 2 to make a pair")
    answers, scores, ranks = [], [], []
    for i, item in enumerate(raw):
        where = f"completions[{i}]"
        if not isinstance(item, dict):
            raise RowError(origin, where, f"field '{where}' must be an object with a response and a score, "
                                          f"got {_describe(item)}")
        text_key = next((k for k in _TEXT_KEYS if k in item), None)
        if text_key is None:
            raise RowError(origin, where, f"field '{where}' has no {', '.join(_TEXT_KEYS[:-1])} or {_TEXT_KEYS[-1]}")
        answers.append(_text(item[text_key], f"{where}.{text_key}", origin))
        score_key = next((k for k in _SCORE_KEYS if k in item), None)
        if score_key is not None:
            scores.append(_number(item[score_key], f"{where}.{score_key}", origin))
        elif "rank" in item:
            ranks.append(_number(item["rank"], f"{where}.rank", origin))
        else:
            raise RowError(origin, where, f"field '{where}' has no overall_score, score or rank")
    if scores and ranks:
        raise RowError(origin, "completions", "some completions have a score and others a rank; use one")
    if ranks:
        _distinct(ranks, "completions[].rank", origin)
        return Ranked(prompt, answers, [-r for r in ranks], False, "completions")
    return Ranked(prompt, answers, scores, True, "completions")


def _numbers(raw: Any, key: str, n: int, origin: str) -> list[float]:
    if not isinstance(raw, list):
        raise RowError(origin, key, f"field '{key}' must be a list of numbers, got {_describe(raw)}")
    if len(raw) != n:
        raise RowError(origin, key, f"field '{key}' has {len(raw)} values for {n} responses; give one per response")
    return [_number(x, f"{key}[{i}]", origin) for i, x in enumerate(raw)]


def _distinct(ranks: list[float], key: str, origin: str) -> None:
    first: dict[float, int] = {}
    for i, rank in enumerate(ranks):
        if rank in first:
            detail = (f"rank {rank:g} appears twice in '{key}' (items {first[rank]} and {i}); ranks must be distinct "
                      "(give scores instead to express a tie)")
            raise RowError(origin, key, detail)
        first[rank] = i
