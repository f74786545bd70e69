"""Judgments → the preference pairs `dpokit dpo` trains on, one JSONL row per pair.

A row is dpokit's standard shape {"prompt", "chosen", "rejected", "margin"?, "origin"}, or its conversational shape
(the prompt a list of messages, each answer one assistant message) when any exported prompt is a conversation (a
text prompt is then one user turn, as the chat template would render it anyway). `origin` is
"label:PROJECT:comparison=ID" (":judgment=ID" added under --policy all).

Votes. A pair judgment votes for one answer, "tie" or "both_bad"; a skip is no vote. A ranking votes, for every two
of its answers, for the one ranked higher. Per comparison:
  majority   the answer with more votes than any other is chosen; a tied vote, or a win of tie/both_bad, is dropped
  unanimous  only when every vote is the same answer
  all        every vote its own row (agreeing votes give one row: a repeated pair is no new information to dpo)
`--min-annotators N` drops comparisons with fewer than N votes. A ranking gives best vs worst (Borda order: mean
rank, kept when the votes on that pair pass the policy) or, with all-pairs, every pair that passes.
`margin` is the mean strength of the agreeing votes that gave one (slight 0.5, much 1.0); it is left out when none
did. An edit replaces the chosen answer's text (the latest agreeing edit), against the answer it beat.
"""
from __future__ import annotations

import itertools
import json
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select

from ..errors import UserError
from . import store
from .agreement import majority

MARGINS = {"slight": 0.5, "much": 1.0}  # odpo reads `margin`: its offset is α·log(1 + margin)
POLICIES = ("majority", "unanimous", "all")
RANKINGS = ("best-vs-worst", "all-pairs")
NO_PREFERENCE = ("tie", "both_bad")
DROPS = ("unjudged", "too_few_annotators", "no_majority", "not_unanimous", "tie", "both_bad", "skip", "empty",
         "identical", "duplicate")


@dataclass(frozen=True)
class Vote:
    """One judgment's say on the pair (a, b): the preferred response id, or 'tie' / 'both_bad'."""

    judgment_id: int
    label: object  # response id, "tie" or "both_bad"
    strength: str | None = None
    edited_text: str | None = None


def export_rows(project, policy: str = "majority", min_annotators: int = 1, ranking: str = "best-vs-worst",
                only: set[int] | None = None) -> tuple[list[dict], dict]:
    """(rows, counts): the pairs to write and what was kept and dropped (comparisons, or judgments under `all`).
    `only`: these comparison ids, not the whole project (iterate's human judge exports one round)."""
    if policy not in POLICIES or ranking not in RANKINGS:
        raise UserError(f"policy must be one of {', '.join(POLICIES)} and ranking one of {', '.join(RANKINGS)}")
    name = project.name
    counts = Counter(dict.fromkeys(("comparisons", "judgments", "rows", "edited", "with_margin", *DROPS), 0))
    made: list[tuple[object, str, str, float | None, str]] = []  # prompt, chosen, rejected, margin, origin
    with project.session() as session:
        comparisons = session.execute(select(store.Comparison.id, store.Comparison.kind, store.Prompt)
                                      .join(store.Prompt, store.Prompt.id == store.Comparison.prompt_id)
                                      .order_by(store.Comparison.id)).all()
        texts = dict(session.execute(select(store.Response.id, store.Response.text)).all())
        members = defaultdict(list)
        for cid, rid in session.execute(select(store.ComparisonResponse.comparison_id,
                                               store.ComparisonResponse.response_id)
                                        .order_by(store.ComparisonResponse.position)):
            members[cid].append(rid)
        judgments = defaultdict(list)
        for j in session.scalars(select(store.Judgment).where(store.Judgment.undone_at.is_(None))
                                 .order_by(store.Judgment.id)):
            judgments[j.comparison_id].append(j)
    for cid, kind, prompt in comparisons:
        if only is not None and cid not in only:
            continue
        counts["comparisons"] += 1
        live = judgments.get(cid, [])
        counts["judgments"] += len(live)
        counts["skip"] += sum(j.choice == "skip" for j in live)
        voting = [j for j in live if j.choice != "skip"]
        if not live:
            counts["unjudged"] += 1
            continue
        if len(voting) < min_annotators:
            counts["too_few_annotators"] += 1
            continue
        origin = f"label:{name}:comparison={cid}"
        for winner, loser, margin, edit, suffix in _decide(kind, members[cid], voting, policy, ranking, counts):
            made.append((prompt.value, edit if edit is not None else texts[winner], texts[loser], margin,
                         origin + suffix))
            counts["edited"] += edit is not None
    rows = _rows(made, counts)
    counts["rows"] = len(rows)
    counts["with_margin"] = sum("margin" in row for row in rows)
    return rows, dict(counts)


def _decide(kind: str, responses: list[int], voting: list, policy: str, ranking: str, counts: Counter):
    """(winner, loser, margin, edit, origin suffix) of each pair one comparison gives."""
    if kind == "pair":
        pairs = [tuple(responses)]
    elif ranking == "all-pairs":
        pairs = list(itertools.combinations(responses, 2))
    else:
        pairs = None  # best vs worst, found below
    if policy == "all":
        for j in voting:
            for a, b in pairs or [_extremes(responses, [j])]:
                yield from _kept([_vote(j, a, b)], a, b, counts, f":judgment={j.id}")
        return
    for a, b in pairs or [_extremes(responses, voting)]:
        votes = [_vote(j, a, b) for j in voting]
        labels = [v.label for v in votes]
        decided = majority(labels) if policy == "majority" else labels[0] if len(set(labels)) == 1 else None
        if decided is None:
            counts["no_majority" if policy == "majority" else "not_unanimous"] += 1
            continue
        yield from _kept([v for v in votes if v.label == decided], a, b, counts, "")


def _kept(agreeing: list[Vote], a: int, b: int, counts: Counter, suffix: str):
    label = agreeing[0].label
    if label in NO_PREFERENCE:
        counts[label] += 1
        return
    strengths = [MARGINS[v.strength] for v in agreeing if v.strength in MARGINS]
    edits = [v.edited_text for v in agreeing if v.edited_text is not None]
    margin = sum(strengths) / len(strengths) if strengths else None
    yield label, b if label == a else a, margin, edits[-1] if edits else None, suffix


def _vote(judgment, a: int, b: int) -> Vote:
    """The judgment's vote on the pair (a, b)."""
    if judgment.choice in NO_PREFERENCE:
        return Vote(judgment.id, judgment.choice)
    if judgment.ranking_json is not None:
        order = json.loads(judgment.ranking_json)
        return Vote(judgment.id, a if order.index(a) < order.index(b) else b)
    return Vote(judgment.id, judgment.chosen_response_id, judgment.strength, judgment.edited_text)


def _extremes(responses: list[int], voting: list) -> tuple[int, int]:
    """Best and worst of a ranked comparison by mean rank over the rankings among `voting` (Borda); ties in the
    mean go to the earlier response. Without rankings (all votes tie/both_bad) the first two responses."""
    rankings = [json.loads(j.ranking_json) for j in voting if j.ranking_json is not None]
    if not rankings:
        return responses[0], responses[1]
    mean = {r: sum(order.index(r) for order in rankings) / len(rankings) for r in responses}
    ordered = sorted(responses, key=lambda r: (mean[r], responses.index(r)))
    return ordered[0], ordered[-1]


def _rows(made: list, counts: Counter) -> list[dict]:
    """JSONL rows, conversational when any prompt is; pairs dpo would refuse (empty, identical, repeated) dropped."""
    conversation = any(not isinstance(prompt, str) for prompt, *_ in made)
    seen, rows = set(), []
    for prompt, chosen, rejected, margin, origin in made:
        if not chosen.strip() or not rejected.strip():
            counts["empty"] += 1
            continue
        if chosen == rejected:
            counts["identical"] += 1
            continue
        key = (json.dumps(prompt, sort_keys=True), chosen, rejected)
        if key in seen:
            counts["duplicate"] += 1
            continue
        seen.add(key)
        if conversation:
            prompt = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
            chosen, rejected = ([{"role": "assistant", "content": t}] for t in (chosen, rejected))
        row = {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        if margin is not None:
            row["margin"] = margin
        rows.append({**row, "origin": origin})
    return rows


def export_pairs(project, output, policy: str = "majority", min_annotators: int = 1, ranking: str = "best-vs-worst",
                 overwrite: bool = False) -> dict:
    """Write the export to `output` whole (a temporary file, then renamed); returns the counts."""
    from ..data.io import write_jsonl

    output = Path(output)
    if output.exists() and not overwrite:
        raise UserError(f"{output} already exists; choose another --output or pass --overwrite")
    rows, counts = export_rows(project, policy=policy, min_annotators=min_annotators, ranking=ranking)
    if not rows:
        raise UserError(f"no pairs to export from {counts.get('comparisons', 0)} comparisons "
                        f"({_dropped(counts) or 'nothing judged yet'}); judge more, or try --policy all")
    output.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(output, rows)
    return counts


def _dropped(counts: dict) -> str:
    return ", ".join(f"{key.replace('_', ' ')} {counts[key]}" for key in DROPS if counts.get(key))


def describe(counts: dict, output) -> str:
    """The summary `dpokit label export` prints."""
    lines = [f"dpokit: wrote {counts['rows']} pairs to {output} from {counts['comparisons']} comparisons and "
             f"{counts['judgments']} judgments ({counts['edited']} with an edited answer, {counts['with_margin']} "
             "with a margin from the strength)"]
    if _dropped(counts):
        lines.append(f"dropped: {_dropped(counts)}")
    if 0 < counts["with_margin"] < counts["rows"]:
        lines.append("note: --loss odpo needs a margin on every pair; train with another loss, or export pairs whose "
                     "judgments all gave a strength")
    return "\n".join(lines)
