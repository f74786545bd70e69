"""How sure a held-out figure is: 95% intervals, and the one sentence a run ends with.

- Accuracy (k right of n pairs): the Wilson score interval (Wilson 1927), which stays inside [0, 1] and keeps its
  coverage for small n and for accuracies near 0 or 1, where the normal approximation p ± z·√(p(1−p)/n) fails.
- Mean margin: a percentile bootstrap over pairs (Efron 1979): resample the pairs with replacement, take the mean
  each time, and keep the middle 95% of those means. Seeded, so a run's report is reproducible.
"""
from __future__ import annotations

import math

import numpy as np

Z95 = 1.959963984540054  # the 97.5th percentile of the standard normal
RESAMPLES = 2000


def wilson(correct: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson interval of a proportion ``correct`` / ``n``: 8 of 10 → (0.4902, 0.9433); (0, 1) for n = 0."""
    if n <= 0:
        return 0.0, 1.0
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    # it contains p exactly (float rounding once put 0/139's lower bound at 1.7e-18, above the estimate)
    return min(p, max(0.0, centre - half)), max(p, min(1.0, centre + half))


def bootstrap_mean(values, seed: int = 0, resamples: int = RESAMPLES) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of ``values`` over resampled pairs; (v, v) for one value."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


def with_intervals(accuracy: float, margins, prefix: str = "eval/") -> dict:
    """The held-out figures' intervals under metrics.jsonl's names: pairs, accuracy and mean-margin intervals."""
    n = len(margins)
    return {f"{prefix}pairs": n, f"{prefix}rewards/accuracies_ci": list(wilson(round(accuracy * n), n)),
            f"{prefix}rewards/margins_ci": list(bootstrap_mean(margins))}


def verdict(end: dict, start: dict | None, reference_free: bool) -> str | None:
    """One plain sentence: did held-out preference improve, not change, or get worse, by the 95% intervals?

    With a reference the policy starts equal to it (every margin 0, each pair a tie), so the baseline is chance,
    accuracy 0.5, and a mean margin of 0. Without one (simpo, orpo) the baseline is the accuracy at the start."""
    interval = end.get("eval/rewards/accuracies_ci")
    if interval is None:
        return None
    accuracy, n = end["eval/rewards/accuracies"], end["eval/pairs"]
    low, high = interval
    if reference_free:
        base = (start or {}).get("eval/rewards/accuracies")
        if base is None:
            return None
        against = f"its accuracy at the start, {base:.3f}"
    else:
        base, against = 0.5, "chance, 0.5 (where a policy equal to its reference stands)"
    figure = f"held-out accuracy {accuracy:.3f} (95% interval {low:.3f}–{high:.3f}, {n} pairs)"
    margin = end.get("eval/rewards/margins_ci")
    margin_text = (f"; mean reward margin {end['eval/rewards/margins']:.4f} (95% interval {margin[0]:.4f}–"
                   f"{margin[1]:.4f})") if margin and not reference_free else ""
    if low > base:
        return f"Held-out preference improved: {figure} lies above {against}{margin_text}."
    if high < base:
        return f"Held-out preference got worse: {figure} lies below {against}{margin_text}."
    return (f"Held-out preference did not change detectably: {figure} includes {against}{margin_text}; more steps, "
            "more held-out pairs or a higher learning rate may tell.")
