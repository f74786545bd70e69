"""Preference losses: pure functions of summed completion log-probs.

Every loss has one signature::

    fn(policy: PairLogps, reference: PairLogps | None, *, beta, <the settings its LossSpec names>) -> LossOutput

Notation (Rafailov et al. 2023): the implicit reward of a completion is r = β · (log π(y|x) − log π_ref(y|x));
``h`` below is the un-scaled margin (log π(y_w) − log π_ref(y_w)) − (log π(y_l) − log π_ref(y_l)).
Reference-free losses (SimPO, ORPO, the SFT term) get ``reference=None`` and never need one: a run made only of
them loads no reference model and computes no reference log-probs. ``ℓ(y) = log π(y|x) / |y|`` below is the
length-normalised (per-token mean) log-prob of a completion.

Losses combine by weight (``--loss sigmoid,sft --loss-weights 1,0.5``): the per-pair loss is Σ w_k · loss_k, and
the logged rewards are those of the first term that defines rewards.
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


def sigmoid_loss(policy, reference, *, beta, label_smoothing=0.0, strengths=None, odpo_alpha=1.0) -> LossOutput:
    """DPO, eq. 7 of Rafailov et al.: −log σ(β h). With ε > 0 this is conservative DPO (cDPO):
    the label is trusted with probability 1 − ε, so the loss is −(1−ε) log σ(β h) − ε log σ(−β h)."""
    h = _margin(policy, reference)
    losses = -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)
    return LossOutput(losses, *_rewards(policy, reference, beta))


def robust_loss(policy, reference, *, beta, label_smoothing=0.0, strengths=None, odpo_alpha=1.0) -> LossOutput:
    """Robust DPO (Chowdhury et al. 2024): an unbiased loss under label-flip rate ε < 0.5,
    [−(1−ε) log σ(β h) + ε log σ(−β h)] / (1 − 2ε)."""
    h = _margin(policy, reference)
    eps = label_smoothing
    losses = (-(1 - eps) * F.logsigmoid(beta * h) + eps * F.logsigmoid(-beta * h)) / (1 - 2 * eps)
    return LossOutput(losses, *_rewards(policy, reference, beta))


def hinge_loss(policy, reference, *, beta, label_smoothing=0.0, strengths=None, odpo_alpha=1.0) -> LossOutput:
    """SLiC-style hinge on the scaled margin: max(0, 1 − β h)."""
    h = _margin(policy, reference)
    return LossOutput(torch.relu(1 - beta * h), *_rewards(policy, reference, beta))


def ipo_loss(policy, reference, *, beta, label_smoothing=0.0, strengths=None, odpo_alpha=1.0) -> LossOutput:
    """IPO (Azar et al. 2024, eq. 17) on per-token-averaged log-ratios, as TRL does and as the IPO authors
    reported: (h̄ − 1/(2β))² where h̄ divides each log-ratio by its completion length."""
    chosen_ratio = (policy.chosen - reference.chosen) / policy.chosen_tokens.clamp(min=1)
    rejected_ratio = (policy.rejected - reference.rejected) / policy.rejected_tokens.clamp(min=1)
    losses = (chosen_ratio - rejected_ratio - 1 / (2 * beta)) ** 2
    return LossOutput(losses, *_rewards(policy, reference, beta))


def ipo_sum_loss(policy, reference, *, beta, label_smoothing=0.0, strengths=None, odpo_alpha=1.0) -> LossOutput:
    """IPO on summed log-ratios, as the reference DPO implementation (eric-mitchell) computes it:
    (h − 1/(2β))². Scales with completion length; pick a larger β than for `ipo`."""
    h = _margin(policy, reference)
    return LossOutput((h - 1 / (2 * beta)) ** 2, *_rewards(policy, reference, beta))


def odpo_loss(policy, reference, *, beta, label_smoothing=0.0, strengths=None, odpo_alpha=1.0) -> LossOutput:
    """DPO with an offset (Amini et al. 2024): −log σ(β h − Δ), Δ = α · log(1 + max(m, 0)) where m is the
    pair's preference strength (``margin`` or score_chosen − score_rejected). The paper log-scales the
    score gap; the +1 keeps tied pairs (m = 0, offset 0: plain DPO) finite."""
    if strengths is None:
        raise ValueError("odpo needs each pair's preference strength (a `margin` or `score_chosen`/`score_rejected` "
                         "field)")
    offset = odpo_alpha * torch.log1p(strengths.clamp(min=0))
    h = _margin(policy, reference)
    return LossOutput(-F.logsigmoid(beta * h - offset), *_rewards(policy, reference, beta))


def _mean_logps(policy: PairLogps) -> tuple[torch.Tensor, torch.Tensor]:
    """ℓ(y_w), ℓ(y_l): summed log-probs divided by completion token counts, (B,) each."""
    return policy.chosen / policy.chosen_tokens.clamp(min=1), policy.rejected / policy.rejected_tokens.clamp(min=1)


def simpo_loss(policy, reference=None, *, beta, gamma=0.5, label_smoothing=0.0) -> LossOutput:
    """SimPO (Meng, Xia and Chen 2024, "SimPO: Simple Preference Optimization with a Reference-Free Reward", eq. 6):
    −log σ(β ℓ(y_w) − β ℓ(y_l) − γ). The reward is the paper's eq. 4, r(y) = β ℓ(y): no reference model. With
    ε > 0 the label is smoothed as in cDPO. TRL's CPOTrainer(loss_type="simpo") writes the same loss as
    β · (ℓ_w − ℓ_l − γ/β); with its default cpo_alpha = 1 it also adds a behaviour-cloning NLL, which the
    paper's SimPO does not (dpokit: add the `sft` term by weight if you want one)."""
    chosen, rejected = _mean_logps(policy)
    h = beta * (chosen - rejected) - gamma
    losses = -(1 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
    return LossOutput(losses, beta * chosen.detach(), beta * rejected.detach())


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 − exp(x)) for x < 0 without cancellation: log(−expm1(x)) near 0, log1p(−exp(x)) below −ln 2
    (Mächler 2012)."""
    return torch.where(x < -LN2, torch.log1p(-torch.exp(x)), torch.log(-torch.expm1(x)))


def orpo_loss(policy, reference=None, *, beta, orpo_lambda=0.1) -> LossOutput:
    """ORPO (Hong, Lee and Thorne 2024, "ORPO: Monolithic Preference Optimization without Reference Model",
    eqs. 2-7): L_SFT + λ · L_OR, one stage, no reference.

    - L_SFT (eq. 2) is the chosen answer's per-token NLL, −ℓ(y_w), over answer tokens only.
    - L_OR (eqs. 6-7) is −log σ(log odds(y_w) − log odds(y_l)), where odds(y) = P(y)/(1 − P(y)) and
      P(y) = exp ℓ(y) (eq. 4). So the log odds are ℓ(y) − log(1 − exp ℓ(y)).

    Rewards are logged as λ · ℓ(y), as TRL logs them. TRL's ORPOTrainer computes the same L_OR; its NLL term
    differs from the paper: a token mean over the whole batch, over prompt *and* answer tokens. dpokit implements
    the paper's. The extras carry TRL's two log-odds metrics under its names.
    """
    chosen, rejected = _mean_logps(policy)
    log_odds = (chosen - rejected) - (log1mexp(chosen) - log1mexp(rejected))  # (B,)
    ratio = F.logsigmoid(log_odds)
    losses = -chosen - orpo_lambda * ratio
    return LossOutput(losses, orpo_lambda * chosen.detach(), orpo_lambda * rejected.detach(),
                      extras={"log_odds_ratio": ratio.detach(), "log_odds_chosen": log_odds.detach()})


def kto_loss(policy, reference, *, beta, labels, desirable_weight=1.0, undesirable_weight=1.0) -> LossOutput:
    """KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", eq. 8) on unpaired
    feedback. Each example's `chosen` is its answer y, `rejected` a mismatched answer y' (another example's) for the
    reference point; ``labels`` (B,) is True for desirable answers.

        r   = log π(y|x) − log π_ref(y|x)
        z₀  = max(0, mean over the batch of log π(y'|x) − log π_ref(y'|x))    (detached: no gradient, §4.1)
        loss = λ_D (1 − σ(β (r − z₀)))   for a desirable answer
               λ_U (1 − σ(β (z₀ − r)))   for an undesirable one

    as TRL 1.16's KTOTrainer(loss_type="kto") computes it. Logged per example as a comparison with the reference point:
    the preferred side is the answer when it is desirable and z₀ when it is not, so `rewards/accuracies` is the share
    of answers on the right side of z₀ and `rewards/margins` their mean signed distance β·(r − z₀) or β·(z₀ − r)."""
    ratio = policy.chosen - reference.chosen  # (B,)
    kl = (policy.rejected - reference.rejected).detach().mean().clamp(min=0)
    desirable = labels.bool()
    losses = torch.where(desirable, desirable_weight * (1 - torch.sigmoid(beta * (ratio - kl))),
                         undesirable_weight * (1 - torch.sigmoid(beta * (kl - ratio))))
    answer, point = beta * ratio.detach(), (beta * kl).expand_as(ratio)
    return LossOutput(losses, torch.where(desirable, answer, point), torch.where(desirable, point, answer),
                      extras={"kl": kl.expand_as(ratio), "desirable": desirable.to(ratio.dtype)})


def sft_term(policy, reference=None, *, beta) -> LossOutput:
    """The chosen answer's per-token NLL, −ℓ(y_w) (the SFT term of RPO, Pang et al. 2024, and of ORPO's eq. 2); it
    defines no rewards, so it only ever joins a combination."""
    nll = chosen_nll(policy)
    zeros = torch.zeros_like(nll).detach()
    return LossOutput(nll, zeros, zeros)


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
    needs_strengths: bool = False  # reads each pair's preference strength (the data's `margin`)
    summary: str = ""
    settings: tuple[str, ...] = ()  # config fields passed to `fn` by name, besides beta
    reference_free: bool = False
    rewards: bool = True  # False: the term defines no rewards (sft)
    extras: tuple[str, ...] = ()  # per-pair metrics it adds under these names
    needs_labels: bool = False  # trains on unpaired thumbs-up/down feedback (data/feedback.py), not on pairs
    starts_at_ln2: bool = False  # policy = reference gives loss ln 2 (the not-learning check measures from there)

    @property
    def uses_label_smoothing(self) -> bool:
        return "label_smoothing" in self.settings


LOSSES: dict[str, LossSpec] = {
    "sigmoid": LossSpec(sigmoid_loss, settings=("label_smoothing",), starts_at_ln2=True,
                        summary="DPO (eq. 7); with --label-smoothing it is cDPO"),
    "cdpo": LossSpec(sigmoid_loss, settings=("label_smoothing",), starts_at_ln2=True,
                     summary="conservative DPO: ε-mixed labels (--label-smoothing)"),
    "robust": LossSpec(robust_loss, settings=("label_smoothing",), starts_at_ln2=True,
                       summary="robust DPO: unbiased under label-flip rate ε"),
    "hinge": LossSpec(hinge_loss, summary="SLiC hinge: max(0, 1 − βh)"),
    "ipo": LossSpec(ipo_loss, summary="IPO on per-token-averaged log-ratios (as TRL)"),
    "ipo_sum": LossSpec(ipo_sum_loss, summary="IPO on summed log-ratios (as the reference DPO code)"),
    "odpo": LossSpec(odpo_loss, needs_strengths=True, settings=("odpo_alpha",),
                     summary="DPO with an offset from per-pair margins"),
    "simpo": LossSpec(simpo_loss, settings=("label_smoothing", "gamma"), reference_free=True,
                      summary="SimPO: length-normalised log-probs with a target margin γ, no reference"),
    "orpo": LossSpec(orpo_loss, settings=("orpo_lambda",), reference_free=True,
                     extras=("log_odds_ratio", "log_odds_chosen"),
                     summary="ORPO: chosen NLL + λ × odds-ratio term, no reference, no SFT stage"),
    "kto": LossSpec(kto_loss, needs_labels=True, settings=("desirable_weight", "undesirable_weight"),
                    extras=("kl", "desirable"),
                    summary="KTO on unpaired thumbs-up/down feedback (or pairs split in two)"),
    "sft": LossSpec(sft_term, reference_free=True, rewards=False,
                    summary="the chosen answer's per-token NLL (only in a combination, e.g. sigmoid,sft)"),
}


def loss_terms(loss: str, weights: str | None = None) -> tuple[tuple[str, float], ...]:
    """"sigmoid,sft" with "1,0.5" → (("sigmoid", 1.0), ("sft", 0.5)); one loss and no weights → weight 1.

    Raises ValueError naming what is wrong: an unknown name, a repeated one, a weight count that does not match,
    a weight that is not a positive number, or a combination with no term that defines rewards."""
    names = [n.strip() for n in loss.split(",")]
    for name in names:
        if name not in LOSSES:
            raise ValueError(f"unknown loss {name!r}; choose from {', '.join(LOSSES)}")
    if len(set(names)) < len(names):
        raise ValueError(f"{loss!r} names a loss twice; give each once, with its weight in loss_weights")
    if weights is None:
        values = [1.0] * len(names)
    else:
        parts = [w.strip() for w in str(weights).split(",")]
        if len(parts) != len(names):
            raise ValueError(f"loss_weights {weights!r} has {len(parts)} weights for {len(names)} losses "
                             f"({', '.join(names)}); give one per loss, in the same order")
        try:
            values = [float(w) for w in parts]
        except ValueError:
            raise ValueError(f"loss_weights {weights!r}: every weight must be a number") from None
        if not all(math.isfinite(w) and w > 0 for w in values):
            raise ValueError(f"loss_weights {weights!r}: every weight must be a positive finite number")
    if len(names) > 1 and any(LOSSES[n].needs_labels for n in names):
        raise ValueError(f"{loss!r} mixes data shapes: kto learns from unpaired feedback, the other losses from pairs; "
                         "use kto alone")
    if not any(LOSSES[n].rewards for n in names):
        raise ValueError(f"{loss!r} has no preference term; combine sft with one (e.g. sigmoid,sft), or use dpokit sft")
    return tuple(zip(names, values))


def _specs(loss: str) -> list[LossSpec]:
    """The registered terms of ``loss`` (one name or a combination); unknown names are loss_terms' to refuse."""
    return [LOSSES[n.strip()] for n in loss.split(",") if n.strip() in LOSSES]


def is_feedback_loss(loss: str) -> bool:
    """Whether ``loss`` trains on unpaired feedback (kto) rather than on pairs."""
    return any(spec.needs_labels for spec in _specs(loss))


def needs_reference(loss: str) -> bool:
    """Whether any term of ``loss`` compares against a reference model."""
    return any(not spec.reference_free for spec in _specs(loss))


def starts_at_ln2(loss: str) -> bool:
    """Whether ``loss`` is one term that equals ln 2 while the policy equals its reference (sigmoid, cdpo, robust)."""
    specs = _specs(loss)
    return len(specs) == 1 and specs[0].starts_at_ln2


LN2 = math.log(2.0)
