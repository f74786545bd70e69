"""Preference metrics (the field's standard names) and the metrics.jsonl writer."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..losses import PairLogps
from ..types import LossOutput


def pair_metrics(out: LossOutput, policy: PairLogps) -> dict[str, torch.Tensor]:
    """Per-pair values, (B,) each; averaging happens over all pairs of a step or an eval set.

    Accuracy counts a pair as right only when the chosen reward is strictly larger: a tie (as at step 0,
    where policy = reference and every margin is 0) counts as wrong, as in TRL and the reference code.
    """
    return {
        "loss": out.losses.detach(),
        "rewards/chosen": out.chosen_rewards,
        "rewards/rejected": out.rejected_rewards,
        "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float(),
        "rewards/margins": out.chosen_rewards - out.rejected_rewards,
        "logps/chosen": policy.chosen.detach(),
        "logps/rejected": policy.rejected.detach(),
    }


class MetricSums:
    """Accumulates per-pair metric tensors and reports means."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for key, v in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(v.sum())
        self.count += next(iter(values.values())).numel()

    def means(self, prefix: str = "") -> dict[str, float]:
        return {prefix + k: v / max(self.count, 1) for k, v in self.sums.items()}


class MetricsLog:
    """Appends one JSON object per line to OUTPUT/metrics.jsonl; on resume, drops lines past the checkpoint."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = path
        if resume_step is not None and path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                    if line.strip() and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    def first_record(self) -> dict | None:
        if not self.path.exists():
            return None
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                return record if record.get("step") == 0 else None
        return None

    def last_record(self) -> dict | None:
        lines = [line for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()] \
            if self.path.exists() else []
        return json.loads(lines[-1]) if lines else None

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
