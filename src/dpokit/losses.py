"""Preference losses: pure functions of summed completion log-probs.

Every loss has one signature::

    fn(policy: PairLogps, reference: PairLogps, *, beta, label_smoothing, margins, odpo_alpha) -> LossOutput

Notation (Rafailov et al. 2023): the implicit reward of a completion is r = β · (log π(y|x) − log π_ref(y|x));
``h`` below is the un-scaled margin (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .types import LossOutput


@dataclass
class PairLogps:
    """Summed completion log-probs of a batch of pairs, with completion token counts."""

    chosen: torch.Tensor  # (B,)
    rejected: torch.Tensor  # (B,)
    chosen_tokens: torch.Tensor  # (B,) number of completion tokens
    rejected_tokens: torch.Tensor  # (B,)

    def detach(self) -> "PairLogps":
        return PairLogps(self.chosen.detach(), self.rejected.detach(), self.chosen_tokens, self.rejected_tokens)


def _rewards(policy: PairLogps, reference: PairLogps, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
    chosen = beta * (policy.chosen - reference.chosen).detach()
    rejected = beta * (policy.rejected - reference.rejected).detach()
    return chosen, rejected


def _margin(policy: PairLogps, reference: PairLogps) -> torch.Tensor:
    return (policy.chosen - reference.chosen) - (policy.rejected - reference.rejected)  # (B,)


def sigmoid_loss(policy, reference, *, beta, label_smoothing=0.0, margins=None, odpo_alpha=1.0) -> LossOutput:
    """DPO, eq. 7 of Rafailov et al.: −log σ(β h). With ε > 0 this is conservative DPO (cDPO):
    the label is trusted with probability 1 − ε, so the loss is −(1−ε) log σ(β h) − ε log σ(−β h)."""
    h = _margin(policy, reference)
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return LossOutput(losses, *_rewards(policy, reference, beta))


def robust_loss(policy, reference, *, beta, label_smoothing=0.0, margins=None, odpo_alpha=1.0) -> LossOutput:
    """Robust DPO (Chowdhury et al. 2024): an unbiased loss under label-flip rate ε < 0.5,
    [−(1−ε) log σ(β h) + ε log σ(−β h)] / (1 − 2ε)."""
    h = _margin(policy, reference)
    eps = label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    return LossOutput(losses, *_rewards(policy, reference, beta))


def hinge_loss(policy, reference, *, beta, label_smoothing=0.0, margins=None, odpo_alpha=1.0) -> LossOutput:
    """SLiC-style hinge on the scaled margin: max(0, 1 − β h)."""
    h = _margin(policy, reference)
    return LossOutput(torch.relu(1 - beta * h), *_rewards(policy, reference, beta))


def ipo_loss(policy, reference, *, beta, label_smoothing=0.0, margins=None, odpo_alpha=1.0) -> LossOutput:
    """IPO (Azar et al. 2024, eq. 17) on per-token-averaged log-ratios, as TRL does and as the IPO authors
    reported: (h̄ − 1/(2β))² where h̄ divides each log-ratio by its completion length."""
    chosen_ratio = (policy.chosen - reference.chosen) / policy.chosen_tokens.clamp(min=1)
    rejected_ratio = (policy.rejected - reference.rejected) / policy.rejected_tokens.clamp(min=1)
    losses = (chosen_ratio - rejected_ratio - 1 / (2 * beta)) ** 2
    return LossOutput(losses, *_rewards(policy, reference, beta))


def ipo_sum_loss(policy, reference, *, beta, label_smoothing=0.0, margins=None, odpo_alpha=1.0) -> LossOutput:
    """IPO on summed log-ratios, as the reference DPO implementation (eric-mitchell) computes it:
    (h − 1/(2β))². Scales with completion length; pick a larger β than for `ipo`."""
    h = _margin(policy, reference)
    return LossOutput((h - 1 / (2 * beta)) ** 2, *_rewards(policy, reference, beta))


def odpo_loss(policy, reference, *, beta, label_smoothing=0.0, margins=None, odpo_alpha=1.0) -> LossOutput:
    """DPO with an offset (Amini et al. 2024): −log σ(β h − Δ), Δ = α · log(1 + max(m, 0)) where m is the
    pair's preference strength (``margin`` or score_chosen − score_rejected). The paper log-scales the
    score gap; the +1 keeps tied pairs (m = 0, offset 0: plain DPO) finite."""
    if margins is None:
        raise ValueError("odpo needs a per-pair margin (a `margin` or `score_chosen`/`score_rejected` field)")
    offset = odpo_alpha * torch.log1p(margins.clamp(min=0))
    h = _margin(policy, reference)
    return LossOutput(-F.logsigmoid(beta * h - offset), *_rewards(policy, reference, beta))


def chosen_nll(policy: PairLogps) -> torch.Tensor:
    """Per-token NLL of the chosen completion, (B,): the RPO term added with weight `sft_weight`."""
    return -policy.chosen / policy.chosen_tokens.clamp(min=1)


def sft_nll(logps: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Supervised fine-tuning: mean negative log-likelihood per trained token over the batch (as HF/TRL SFT).

    ``logps`` (B,) summed log-probs of each example's trained tokens, ``tokens`` (B,) their counts.
    """
    return -logps.sum() / tokens.sum().clamp(min=1)


LossFn = Callable[..., LossOutput]


@dataclass(frozen=True)
class LossSpec:
    fn: LossFn
    uses_label_smoothing: bool = False
    needs_margins: bool = False
    summary: str = ""


LOSSES: dict[str, LossSpec] = {
    "sigmoid": LossSpec(sigmoid_loss, uses_label_smoothing=True, summary="DPO (eq. 7); with --label-smoothing it is cDPO"),
    "cdpo": LossSpec(sigmoid_loss, uses_label_smoothing=True, summary="conservative DPO: ε-mixed labels (--label-smoothing)"),
    "robust": LossSpec(robust_loss, uses_label_smoothing=True, summary="robust DPO: unbiased under label-flip rate ε"),
    "hinge": LossSpec(hinge_loss, summary="SLiC hinge: max(0, 1 − βh)"),
    "ipo": LossSpec(ipo_loss, summary="IPO on per-token-averaged log-ratios (as TRL)"),
    "ipo_sum": LossSpec(ipo_sum_loss, summary="IPO on summed log-ratios (as the reference DPO code)"),
    "odpo": LossSpec(odpo_loss, needs_margins=True, summary="DPO with an offset from per-pair margins"),
}

LN2 = math.log(2.0)
