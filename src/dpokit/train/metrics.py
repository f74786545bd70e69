"""Preference metrics (the field's standard names) and the metrics.jsonl writer."""
from __future__ import annotations

import json
from pathlib import Path

import torch

from ..errors import UserError

from ..losses import PairLogps
from ..types import LossOutput


def pair_metrics(out: LossOutput, policy: PairLogps) -> dict[str, torch.Tensor]:
    """Per-pair values, (B,) each; averaging happens over all pairs of a step or an eval set: a reward model's
    (below) and the policy's log-probs of both answers.

    Accuracy counts a pair as right only when the chosen reward is strictly larger: a tie (as at step 0,
    where policy = reference and every margin is 0) counts as wrong, as in TRL and the reference code.
    """
    return {**reward_model_metrics(out), "logps/chosen": policy.chosen.detach(),
            "logps/rejected": policy.rejected.detach(), **(out.extras or {})}


METRIC_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
               "logps/rejected")


def reward_model_metrics(out: LossOutput) -> dict[str, torch.Tensor]:
    """A reward model's per-pair values under the same names as DPO's (there the rewards are implicit, here they are
    the model's scores), so held-out intervals, reports and verdicts read both alike. A tie counts as wrong."""
    return {
        "loss": out.losses.detach(),
        "rewards/chosen": out.chosen_rewards,
        "rewards/rejected": out.rejected_rewards,
        "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float(),
        "rewards/margins": out.chosen_rewards - out.rejected_rewards,
    }


REWARD_METRIC_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")


class MetricSums:
    """Accumulates per-pair metric tensors and reports means."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, values: dict[str, torch.Tensor]) -> None:
        for key, v in values.items():
            self.sums[key] = self.sums.get(key, 0.0) + float(v.sum())
        self.count += next(iter(values.values())).numel()

    def reduce(self, accelerator, keys: tuple[str, ...] = METRIC_KEYS) -> "MetricSums":
        """Sum over processes, so every rank reports the mean over all examples of the step.

        `keys` are the same on every rank, even one that saw no examples: collectives must match."""
        if accelerator.num_processes == 1:
            return self
        flat = torch.tensor([self.sums.get(k, 0.0) for k in keys] + [self.count], dtype=torch.float64,
                            device=accelerator.device)
        flat = accelerator.reduce(flat, "sum")
        self.sums = {k: float(v) for k, v in zip(keys, flat[:-1])}
        self.count = int(flat[-1])
        return self

    def means(self, prefix: str = "") -> dict[str, float]:
        return {prefix + k: v / max(self.count, 1) for k, v in self.sums.items()}


class MetricsLog:
    """Appends one JSON object per line to OUTPUT/metrics.jsonl; on resume, drops lines past the checkpoint."""

    def __init__(self, path: Path, resume_step: int | None = None, writer: bool = True):
        self.path, self.writer = path, writer  # only one process writes
        if writer and resume_step is not None and path.exists():
            records = self._read_for_resume(path)
            kept = [json.dumps(r) for r in records if r.get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept), encoding="utf-8")

    @staticmethod
    def _read_for_resume(path: Path) -> list[dict]:
        """Parsed lines; a torn last line (killed mid-write) is dropped, a broken line elsewhere is an error."""
        lines = [(n, line) for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1) if line.strip()]
        records = []
        for i, (n, line) in enumerate(lines):
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                if i == len(lines) - 1:
                    break
                raise UserError(f"{path}:{n}: not a JSON line; fix or delete that line, then --resume again") from None
        return records

    def first_record(self) -> dict | None:
        if not self.path.exists():
            return None
        for line in self.path.read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                return record if record.get("step") == 0 else None
        return None

    def write(self, record: dict) -> None:
        if not self.writer:
            return
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
