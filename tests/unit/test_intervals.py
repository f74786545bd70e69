"""Interval arithmetic against known values, and the end-of-run sentence in each of its cases."""
from __future__ import annotations

import numpy as np
import pytest

from dpokit.eval.intervals import bootstrap_mean, verdict, wilson, with_intervals


@pytest.mark.parametrize("k,n,low,high", [
    (8, 10, 0.4902, 0.9433),  # Wilson's interval as tabulated (Newcombe 1998, method 3)
    (0, 10, 0.0, 0.2775),
    (10, 10, 0.7225, 1.0),
])
def test_wilson_known_values(k, n, low, high):
    got = wilson(k, n)
    assert got == pytest.approx((low, high), abs=6e-4)


def test_wilson_is_symmetric_and_narrows_with_n():
    assert wilson(3, 10) == pytest.approx(tuple(1 - x for x in reversed(wilson(7, 10))))
    assert np.diff(wilson(50, 100)) < np.diff(wilson(5, 10))
    assert wilson(0, 0) == (0.0, 1.0)


def test_wilson_always_contains_its_estimate():
    """0/139 once came out as (1.7e-18, 0.027): a lower bound above the estimate, which broke the report's plot."""
    for n in range(1, 400):
        for k in (0, 1, n // 2, n - 1, n):
            low, high = wilson(k, n)
            assert 0.0 <= low <= k / n <= high <= 1.0, (k, n)
    assert wilson(0, 139)[0] == 0.0 and wilson(139, 139)[1] == 1.0


def test_bootstrap_mean():
    assert bootstrap_mean([0.3] * 50) == pytest.approx((0.3, 0.3))
    values = np.random.default_rng(1).normal(1.0, 2.0, size=400)
    low, high = bootstrap_mean(values)
    # close to the normal-theory interval mean ± 1.96·s/√n for this many pairs
    half = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert low == pytest.approx(values.mean() - half, abs=0.04) and high == pytest.approx(values.mean() + half, abs=0.04)
    assert bootstrap_mean(values) == (low, high)  # seeded: the same interval every time


def end(accuracy, n, margins):
    return {"eval/rewards/accuracies": accuracy, "eval/rewards/margins": float(np.mean(margins)),
            **with_intervals(accuracy, margins)}


def test_verdicts():
    up = end(78 / 116, 116, [0.2] * 100 + [-0.1] * 16)
    assert verdict(up, None, reference_free=False).startswith("Held-out preference improved: held-out accuracy 0.672 "
                                                              "(95% interval 0.583–0.751, 116 pairs) lies above chance")
    flat = end(0.5, 16, [0.1, -0.1] * 8)
    assert verdict(flat, None, reference_free=False).startswith("Held-out preference did not change detectably")
    down = end(20 / 116, 116, [-0.2] * 116)
    assert verdict(down, None, reference_free=False).startswith("Held-out preference got worse")
    start = {"eval/rewards/accuracies": 0.6}
    assert "its accuracy at the start, 0.600" in verdict(end(0.62, 100, [0.0] * 100), start, reference_free=True)
    assert verdict({"eval/loss": 1.0}, None, reference_free=False) is None  # SFT: no preference figures
