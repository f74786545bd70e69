"""Batches another command adds to an existing project (`dpokit iterate --judge human:PROJECT`: a round's samples).

A batch is named by a key; every prompt and response it adds has a source starting with `KEY:`, which is how its
comparisons are found again and how each response maps back to what made it (iterate: `KEY:prompt-P:sample-S`).
Adding is one transaction that first looks for the key, so a resumed caller never adds the same batch twice.
"""
from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import replace

from sqlalchemy import select

from . import store
from .candidates import PromptCandidates, store_candidates


def add_batch(project, groups: list[PromptCandidates], key: str, *, max_pairs: int = 6, seed: int = 0) -> dict | None:
    """Store the groups (prompt and response sources prefixed with `KEY:`) with their comparisons: a pair for two
    distinct answers, one ranking for more. Returns the counts, or None when the key is already there (nothing is
    written)."""
    with project.session(lock=True) as session:
        if session.scalar(select(store.Prompt.id).where(store.Prompt.source.startswith(f"{key}:", autoescape=True))
                          .limit(1)) is not None:
            return None
        keyed = [PromptCandidates(g.prompt, f"{key}:{g.source}",
                                  [replace(c, source=f"{key}:{c.source}") for c in g.responses]) for g in groups]
        return store_candidates(session, keyed, ranking=True, max_pairs=max_pairs, rng=random.Random(seed))


def batch_comparisons(project, key: str) -> dict[int, dict[str, bool]]:
    """The batch's comparisons: comparison id → {response text: cut off (no EOS)}."""
    with project.session() as session:
        found = session.execute(
            select(store.ComparisonResponse.comparison_id, store.Response.text, store.Response.truncated)
            .join(store.Response, store.Response.id == store.ComparisonResponse.response_id)
            .join(store.Prompt, store.Prompt.id == store.Response.prompt_id)
            .where(store.Prompt.source.startswith(f"{key}:", autoescape=True))).all()
    comparisons: dict[int, dict[str, bool]] = defaultdict(dict)
    for cid, text, truncated in found:
        comparisons[cid][text] = truncated
    return dict(comparisons)


def waiting(project, comparison_ids) -> int:
    """How many of these comparisons have fewer live judgments than the project's overlap (a skip counts: the label
    app hands a skipped comparison to nobody else)."""
    ids = list(comparison_ids)
    with project.session() as session:
        live = Counter(session.scalars(select(store.Judgment.comparison_id)
                                       .where(store.Judgment.undone_at.is_(None),
                                              store.Judgment.comparison_id.in_(ids))))
    needed = store.overlap(project)
    return sum(live[cid] < needed for cid in ids)
