"""The experiment's true reward as a dpokit judge: `--judge py:experiments/sentiment/judge.py:positive`.

P(positive) of prefix + continuation under the fitted TF-IDF + logistic-regression classifier; the classifier is read
from $SENTIMENT_REWARD (a reward_model.joblib that run.py or iterate.py wrote)."""
from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reward import Reward  # noqa: E402


@lru_cache(maxsize=1)
def classifier() -> Reward:
    import joblib

    return Reward(joblib.load(os.environ["SENTIMENT_REWARD"])["pipeline"])


def positive(prompts: list[str], responses: list[str]) -> list[float]:
    return [float(x) for x in classifier()([p + r for p, r in zip(prompts, responses)])]
