"""Agreement coefficients of `dpokit label`: checked against scikit-learn, textbook examples and properties."""
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dpokit.label.agreement import cohen_kappa, krippendorff_alpha, majority


@pytest.mark.parametrize("seed", range(20))
def test_kappa_equals_sklearn_on_random_labels(seed):
    from sklearn.metrics import cohen_kappa_score

    rng = random.Random(seed)
    categories = ["A", "B", "tie", "both_bad"][:rng.randint(2, 4)]
    n = rng.randint(2, 60)
    a = b = ["A"] * n
    while len(set(a) | set(b)) == 1:  # one label in all: chance agreement is perfect and κ undefined; draw again
        a = [rng.choice(categories) for _ in range(n)]
        b = [x if rng.random() < 0.6 else rng.choice(categories) for x in a]  # correlated, as annotators are
    assert cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)


def test_kappa_hand_worked():
    """50 items: both yes 20, yes/no 5, no/yes 10, both no 15. p_o = 35/50 = 0.7; A says yes 25/50 = 0.5,
    B 30/50 = 0.6, so p_e = 0.5·0.6 + 0.5·0.4 = 0.5 and κ = (0.7 − 0.5) / (1 − 0.5) = 0.4."""
    a = ["yes"] * 25 + ["no"] * 25
    b = ["yes"] * 20 + ["no"] * 5 + ["yes"] * 10 + ["no"] * 15
    assert cohen_kappa(a, b) == pytest.approx(0.4, abs=1e-12)
    # AABB vs ABBB: p_o = 3/4, p_e = (2·1 + 2·3)/16 = 1/2, κ = 1/2
    assert cohen_kappa("AABB", "ABBB") == pytest.approx(0.5)


def test_kappa_edges():
    assert cohen_kappa("ABAB", "ABAB") == 1.0
    assert cohen_kappa("AAAA", "AAAA") is None  # every label the same: chance agreement is already perfect
    assert cohen_kappa([], []) is None
    assert cohen_kappa(["A", None, "B"], ["A", "B", None]) is None  # one item both labelled, all one label
    assert cohen_kappa(["A", None, "B", "B"], ["A", "A", "B", None]) == 1.0  # items either left out are ignored
    assert cohen_kappa("AB", "BA") == pytest.approx(-1.0)
    with pytest.raises(ValueError):
        cohen_kappa("AB", "A")


KRIPPENDORFF_2011 = [  # "Computing Krippendorff's Alpha-Reliability" (2011), section C: 4 coders, 12 units, None missing
    [1, 2, 3, 3, 2, 1, 4, 1, 2, None, None, None],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, None, 3],
    [None, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, None],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, None],
]


def test_alpha_krippendorff_textbook_example():
    """Unit 12 has one value, so it is not pairable: 40 pairable values remain, n_c = 9, 13, 10, 5, 3 for values
    1..5. Disagreeing coincidences: unit 2 (2,2,3,2: 6 ordered pairs × 1/3 = 2), unit 6 (1,2,3,4: 12 × 1/3 = 4),
    unit 8 (1,1,2,1: 6 × 1/3 = 2): 8 in all. Σ_{c≠k} n_c n_k = 40² − (81 + 169 + 100 + 25 + 9) = 1216.
    α = 1 − (40 − 1) · 8 / 1216 = 1 − 312/1216 = 0.74342…, the 0.743 the paper gives."""
    units = list(zip(*KRIPPENDORFF_2011))
    assert krippendorff_alpha(units) == pytest.approx(1 - 312 / 1216, abs=1e-12)
    assert round(krippendorff_alpha(units), 3) == 0.743


def test_alpha_two_coders_hand_worked():
    """Two coders, 4 units: (A,A), (A,B), (B,B), (B,B). Coincidences: o_AA = 2, o_AB = o_BA = 1, o_BB = 4;
    n_A = 3, n_B = 5, n = 8. α = 1 − 7 · 2 / (2 · 3 · 5) = 1 − 14/30 = 0.5333…"""
    assert krippendorff_alpha([("A", "A"), ("A", "B"), ("B", "B"), ("B", "B")]) == pytest.approx(1 - 14 / 30)


labels = st.sampled_from(["A", "B", "tie", "both_bad"])


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(labels, st.integers(2, 5), st.integers(0, 3)), min_size=2, max_size=30))
def test_alpha_is_one_for_perfect_agreement(units):
    """Every coder who labels a unit gives the same label (some coders missing): α = 1, when defined."""
    table = [[label] * coders + [None] * missing for label, coders, missing in units]
    alpha = krippendorff_alpha(table)
    if len({label for label, _, _ in units}) == 1:
        assert alpha is None  # one category in all: no disagreement is even possible
    else:
        assert alpha == pytest.approx(1.0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.one_of(st.none(), labels), min_size=2, max_size=4), min_size=1, max_size=20),
       st.randoms(use_true_random=False))
def test_alpha_does_not_depend_on_coder_order_or_label_names(units, rng):
    alpha = krippendorff_alpha(units)
    shuffled = [rng.sample(unit, len(unit)) for unit in units]
    renamed = [[None if v is None else {"A": "x", "B": "y", "tie": "z", "both_bad": "w"}[v] for v in unit]
               for unit in units]
    for other in (krippendorff_alpha(shuffled), krippendorff_alpha(renamed)):
        assert (alpha is None and other is None) or other == pytest.approx(alpha)
    if alpha is not None:
        assert alpha <= 1.0 + 1e-12


def test_alpha_undefined_without_pairable_values():
    assert krippendorff_alpha([]) is None
    assert krippendorff_alpha([("A", None), (None, "B")]) is None


def test_majority():
    assert majority(["A", "A", "B"]) == "A"
    assert majority(["A", "B"]) is None  # a tied vote
    assert majority(["A", "B", "tie", "A"]) == "A"
    assert majority(["tie", "tie", "A"]) == "tie"
    assert majority([None, "B"]) == "B"
    assert majority([]) is None
