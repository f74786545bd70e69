"""How much annotators agree: Cohen's κ (two annotators), Krippendorff's α (any number, missing data), majority.

Pure functions over labels (any hashable values; None is "no label"). Both coefficients are 1 for perfect agreement,
0 for agreement at chance level and negative below it; None where they are undefined (no items, or every label the
same, so chance agreement is already perfect).
"""
from __future__ import annotations

from collections import Counter
from itertools import permutations
from typing import Hashable, Sequence


def cohen_kappa(a: Sequence[Hashable], b: Sequence[Hashable]) -> float | None:
    """κ = (p_o − p_e) / (1 − p_e) over items both labelled (Cohen 1960): p_o the share of items they agree on,
    p_e = Σ_k p_a(k) · p_b(k) the agreement expected from each one's label frequencies alone.

    cohen_kappa("AABB", "ABBB") = (0.75 − (0.5·0.25 + 0.5·0.75)) / (1 − 0.5) = 0.5"""
    if len(a) != len(b):
        raise ValueError(f"two annotators label the same items: {len(a)} labels against {len(b)}")
    pairs = [(x, y) for x, y in zip(a, b) if x is not None and y is not None]
    n = len(pairs)
    if n == 0:
        return None
    observed = sum(x == y for x, y in pairs) / n
    count_a, count_b = Counter(x for x, _ in pairs), Counter(y for _, y in pairs)
    expected = sum(count_a[k] * count_b[k] for k in count_a) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def krippendorff_alpha(units: Sequence[Sequence[Hashable]]) -> float | None:
    """Krippendorff's α for nominal data: α = 1 − D_o / D_e, computed from the coincidence matrix
    (Krippendorff, Content Analysis, 2004, ch. 11; "Computing Krippendorff's Alpha-Reliability", 2011).

    `units` holds each unit's labels, one per coder, None where a coder gave none; units with fewer than two
    labels are not pairable and drop out. Each ordered pair of labels (c, k) from different coders of a unit with
    m labels adds 1/(m − 1) to o[c, k]; n_c = Σ_k o[c, k], n = Σ_c n_c. Then
    α = 1 − (n − 1) · Σ_{c≠k} o[c, k] / Σ_{c≠k} n_c · n_k."""
    coincidence: Counter = Counter()
    for unit in units:
        values = [v for v in unit if v is not None]
        m = len(values)
        if m < 2:
            continue
        for c, k in permutations(values, 2):  # ordered pairs of different coders' labels
            coincidence[c, k] += 1.0 / (m - 1)
    totals: Counter = Counter()
    for (c, _), weight in coincidence.items():
        totals[c] += weight
    n = sum(totals.values())
    disagreement_expected = sum(totals[c] * totals[k] for c in totals for k in totals if c != k)
    if n <= 1 or disagreement_expected == 0:
        return None
    disagreement_observed = sum(w for (c, k), w in coincidence.items() if c != k)
    return 1.0 - (n - 1) * disagreement_observed / disagreement_expected


def majority(labels: Sequence[Hashable]) -> Hashable | None:
    """The label with more votes than any other (None labels ignored); None on a tied vote or no votes.

    majority(["A", "A", "B"]) = "A";  majority(["A", "B"]) = None"""
    counts = Counter(v for v in labels if v is not None).most_common(2)
    if not counts or len(counts) == 2 and counts[0][1] == counts[1][1]:
        return None
    return counts[0][0]
