"""The admin page's numbers: progress, per-annotator pace and habits, agreement between annotators.

Agreement is measured on position-free labels: a pair judgment's label is the chosen answer's place in the
comparison as stored ("A" or "B", whatever side it was shown on), "tie" or "both_bad"; a ranking's is its best
answer's place. A skip is no label. κ is taken for every two annotators over the comparisons both labelled, α over
all comparisons; an annotator's agreement with the majority is against the others' majority (leave-one-out), over
the comparisons where the others have one.
"""
from __future__ import annotations

import statistics
import string
from collections import defaultdict
from itertools import combinations

from sqlalchemy import func, select

from . import store
from .agreement import cohen_kappa, krippendorff_alpha, majority


def admin_summary(project) -> dict:
    overlap = store.overlap(project)
    with project.session() as session:
        names = dict(session.execute(select(store.Annotator.id, store.Annotator.name)
                                     .order_by(store.Annotator.name)).all())
        places = {(cid, rid): pos for cid, pos, rid in session.execute(
            select(store.ComparisonResponse.comparison_id, store.ComparisonResponse.position,
                   store.ComparisonResponse.response_id))}
        judgments = list(session.scalars(select(store.Judgment).where(store.Judgment.undone_at.is_(None))
                                         .order_by(store.Judgment.id)))
        comparisons = session.scalar(select(func.count(store.Comparison.id)))
    labels: dict[int, dict[int, str]] = defaultdict(dict)  # comparison → annotator → label
    per_comparison = defaultdict(int)
    for j in judgments:
        per_comparison[j.comparison_id] += 1
        label = _label(j, places)
        if label is not None:
            labels[j.comparison_id][j.annotator_id] = label
    return {
        "comparisons": comparisons,
        "judgments": len(judgments),
        "complete": sum(n >= overlap for n in per_comparison.values()),
        "annotators": [_annotator(aid, name, judgments, labels) for aid, name in names.items()],
        "kappa": _kappas(names, labels),
        "alpha": krippendorff_alpha([list(by.values()) for by in labels.values()]),
        "position_bias": _left_share(judgments),
    }


def _label(judgment, places: dict) -> str | None:
    if judgment.choice in ("tie", "both_bad"):
        return judgment.choice
    if judgment.chosen_response_id is None:  # skip
        return None
    return string.ascii_uppercase[places[judgment.comparison_id, judgment.chosen_response_id] % 26]


def _left_share(judgments) -> dict:
    picks = [j.choice == "left" for j in judgments if j.choice in ("left", "right")]
    return {"left_share": sum(picks) / len(picks) if picks else None, "n": len(picks)}


def _annotator(annotator_id: int, name: str, judgments, labels) -> dict:
    mine = [j for j in judgments if j.annotator_id == annotator_id]
    seconds = [j.seconds for j in mine if j.seconds is not None]
    hits = []
    for by in labels.values():
        if annotator_id in by:
            others = majority([label for aid, label in by.items() if aid != annotator_id])
            if others is not None:
                hits.append(by[annotator_id] == others)
    return {"name": name, "judgments": len(mine), "median_seconds": statistics.median(seconds) if seconds else None,
            "left_share": _left_share(mine)["left_share"],
            "agreement_with_majority": sum(hits) / len(hits) if hits else None}


def _kappas(names: dict, labels: dict) -> list[dict]:
    rows = []
    for a, b in combinations(names, 2):  # names are in name order
        both = [(by[a], by[b]) for by in labels.values() if a in by and b in by]
        if both:
            rows.append({"a": names[a], "b": names[b], "kappa": cohen_kappa(*zip(*both)), "n": len(both)})
    return rows
