"""The ground-truth reward of the sentiment experiment: P(positive) from a TF-IDF + logistic-regression classifier
trained on aclImdb/train (the DPO paper used a RoBERTa-large classifier, which cannot be downloaded here)."""
from __future__ import annotations

import gzip
import json
import random
import re
import time
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parents[3] / "shared" / "data"  # /work/shared/data next to the repository
NEEDS_SKLEARN = ("the sentiment experiment needs scikit-learn for its ground-truth reward: "
                 "pip install -e '.[experiments]' (or pip install scikit-learn)")


def clean(text: str) -> str:
    """Review text as the model sees it: HTML line breaks → spaces, runs of white space → one space."""
    return re.sub(r"\s+", " ", text.replace("<br />", " ")).strip()


def read_reviews(path: Path, *, limit: int | None = None, seed: int = 0) -> list[dict]:
    """Rows {text (cleaned), label 0|1}; with `limit`, a seeded random subset (the files are ordered neg, then pos)."""
    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    if limit is not None and limit < len(rows):
        rows = random.Random(seed).sample(rows, limit)
    return [{"text": clean(r["text"]), "label": int(r["label"])} for r in rows]


class Reward:
    """reward(texts) → P(positive) in [0, 1], one per text (scikit-learn's predict_proba[:, 1])."""

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def __call__(self, texts: list[str]) -> np.ndarray:
        return self.pipeline.predict_proba([clean(t) for t in texts])[:, 1]


def fit_reward(train: list[dict], test: list[dict], cache: Path, *, max_features: int = 200_000) -> tuple[Reward, dict]:
    """Fit (or load from `cache`) the classifier; report its test accuracy. The cache is keyed by the sizes used."""
    try:
        import joblib
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
    except ImportError:
        raise SystemExit(NEEDS_SKLEARN) from None
    key = {"train": len(train), "test": len(test), "max_features": max_features}
    if cache.is_file():
        saved = joblib.load(cache)
        if saved["key"] == key:
            return Reward(saved["pipeline"]), saved["info"]
    started = time.time()
    pipeline = make_pipeline(
        TfidfVectorizer(ngram_range=(1, 2), min_df=2, max_features=max_features, sublinear_tf=True),
        LogisticRegression(C=4, max_iter=2000))
    pipeline.fit([r["text"] for r in train], [r["label"] for r in train])
    predicted = pipeline.predict([r["text"] for r in test])
    accuracy = float(np.mean(predicted == np.array([r["label"] for r in test])))
    info = {"train_reviews": len(train), "test_reviews": len(test), "test_accuracy": accuracy,
            "fit_seconds": time.time() - started, "reward": "P(positive) = predict_proba[:, 1] of prefix + completion",
            "features": f"TF-IDF word 1-2-grams, min_df=2, max_features={max_features}, sublinear tf; LR C=4"}
    cache.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump({"key": key, "pipeline": pipeline, "info": info}, cache)
    return Reward(pipeline), info
