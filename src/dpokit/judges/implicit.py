"""`implicit`: β · (log π(y|x) − log π_ref(y|x)) of a policy and its reference on each sample's exact ids, the
policy read as a reward model (Rafailov et al. 2023, "Your language model is secretly a reward model")."""
from __future__ import annotations

from dataclasses import dataclass

from ..logprobs import response_logps_ids
from .base import Sample


@dataclass
class ImplicitJudge:
    """β · (log π − log π_ref) on each sample's own ids; log-probs already on a sample are reused."""

    policy: object
    reference: object
    beta: float
    pad_id: int
    batch_size: int = 8
    name: str = "implicit"

    def __call__(self, samples: list[Sample]) -> list[float]:
        add_logps(samples, self.policy, self.reference, self.pad_id, batch_size=self.batch_size)
        return [self.beta * (s.policy_logps - s.reference_logps) for s in samples]


def add_logps(samples: list[Sample], policy, reference, pad_id: int, *, batch_size: int = 8) -> None:
    """Fill `policy_logps` / `reference_logps` where missing (the reference IS the policy when they are one object)."""
    for attr, model in (("policy_logps", policy), ("reference_logps", reference)):
        todo = [s for s in samples if getattr(s, attr) is None]
        if not todo:
            continue
        if attr == "reference_logps" and reference is policy:
            for s in todo:
                s.reference_logps = s.policy_logps
            continue
        logps, _ = response_logps_ids(model, [list(s.prompt_ids) for s in todo], [list(s.response_ids) for s in todo],
                                      pad_id, batch_size=batch_size)
        for s, value in zip(todo, logps.tolist()):
            setattr(s, attr, value)
