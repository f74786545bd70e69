"""What the one training loop optimises: DPO (and its family) on pairs, next-token NLL on SFT examples, or a
Bradley–Terry reward model on pairs.

An objective knows how to batch its examples, how to wrap the model so that one module forward gives the log-probs
it needs (distributed wrappers sync gradients through forward), and how to turn a batch into a loss and per-example
metrics. The loop knows nothing else about it.
"""
from __future__ import annotations

from typing import Any, Callable, Protocol

import torch

from ..data.collate import collate_pairs, collate_sequences, collator
from ..logprobs import PairLogpsModule, SequenceLogpsModule
from ..losses import LOSSES, PairLogps, chosen_nll, loss_terms, sft_nll
from ..types import LossOutput, PreferenceBatch, SequenceBatch, TokenizedExample, TokenizedPair
from .metrics import METRIC_KEYS, REWARD_METRIC_KEYS, pair_metrics, reward_model_metrics


class Objective(Protocol):
    """What the loop asks of an objective; DPOObjective, SFTObjective and RewardObjective are the kinds dpokit ships."""

    name: str  # the progress bar's label
    metric_keys: tuple[str, ...]  # per-example metrics __call__ returns, averaged over a step or the held-out set
    progress_key: str | None  # the metric the progress bar shows beside the loss
    collate: Callable[[list, int], Any]  # (examples, pad id) → a batch

    def wrap(self, model) -> torch.nn.Module:
        """The module whose forward gives what __call__ needs (distributed wrappers sync gradients through forward)."""

    def length(self, example) -> int:
        """Tokens of one example, for --group-by-length."""

    def begin_step(self, examples: list, shares: int) -> None:
        """Called with a step's examples before its micro-batches (split into `shares` over micro-batches and
        processes)."""

    def __call__(self, module, batch, split: str, indices: list[int]) -> tuple[torch.Tensor, dict]:
        """(mean loss of the micro-batch, per-example metrics) for split "train" or "eval"."""

    def finish(self, means: dict[str, float]) -> dict[str, float]:
        """Metrics derived from the averaged ones (e.g. a per-token loss from per-example sums)."""


def combined_loss(policy: PairLogps, reference_logps: PairLogps | None, strengths, config, labels=None) -> LossOutput:
    """Σ w_k · loss_k over the terms of ``config.loss`` (one, or several by --loss-weights), per pair; rewards and
    extras from the first term that defines rewards. Each loss gets only the settings its LossSpec names."""
    total, shown, extras = None, None, {}
    for name, weight in loss_terms(config.loss, config.loss_weights):
        spec = LOSSES[name]
        settings = {key: getattr(config, key) for key in spec.settings}
        if spec.needs_strengths:
            settings["strengths"] = strengths
        if spec.needs_labels:
            settings["labels"] = labels
        out = spec.fn(policy, None if spec.reference_free else reference_logps, beta=config.beta, **settings)
        total = weight * out.losses if total is None else total + weight * out.losses
        shown = out if shown is None and spec.rewards else shown
        extras.update(out.extras or {})
    return LossOutput(total, shown.chosen_rewards, shown.rejected_rewards, extras or None)


def objective(policy_model, reference_logps: PairLogps | None, batch: PreferenceBatch, config,
              policy: PairLogps | None = None):
    """DPO-family loss of one micro-batch (mean over its pairs) and its per-pair metrics.

    `policy_model` is a PairLogpsModule (possibly inside a DDP wrapper): calling it gives the pair log-probs, unless
    they are given (`policy`). `reference_logps` is None for reference-free losses.
    """
    policy = policy if policy is not None else PairLogps(*policy_model(batch))
    out = combined_loss(policy, reference_logps, batch.strengths, config, batch.labels)
    losses = out.losses
    if config.sft_weight:
        losses = losses + config.sft_weight * chosen_nll(policy)
    return losses.mean(), pair_metrics(out, policy)


class DPOObjective:
    name = "dpo"
    metric_keys = METRIC_KEYS
    progress_key = "rewards/accuracies"

    def __init__(self, reference, config):
        """`reference`: a LiveReference, CachedReference or AdaptersOffReference; None for reference-free losses."""
        self.reference, self.config = reference, config
        self.collate = collator(config)
        self.metric_keys = METRIC_KEYS + tuple(key for name, _ in loss_terms(config.loss, config.loss_weights)
                                               for key in LOSSES[name].extras)
        self._eval_reference: dict[tuple, PairLogps] = {}  # held-out reference log-probs never change
        # Set by run_dpo when the reference is the policy before its first step (no --ref): until the first training
        # batch, the policy's held-out log-probs are the reference's, so the step-0 evaluation reads them instead of
        # running the policy over the held-out pairs again (and the tie is exact: margins 0, accuracy 0, loss ln 2).
        self.policy_is_reference = False

    def wrap(self, model) -> torch.nn.Module:
        return PairLogpsModule(model, lean=not self.config.full_logits)

    @staticmethod
    def length(pair: TokenizedPair) -> int:
        return len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids))

    def reference_logps(self, batch: PreferenceBatch, split: str, indices: list[int], module) -> PairLogps | None:
        if self.reference is None:
            return None
        if split != "eval":
            return self.reference.logps(batch, split, indices, policy_module=module)
        key = tuple(indices)
        if key not in self._eval_reference:
            self._eval_reference[key] = self.reference.logps(batch, split, indices, policy_module=module)
        return self._eval_reference[key]

    def __call__(self, module, batch: PreferenceBatch, split: str, indices: list[int]):
        reference = self.reference_logps(batch, split, indices, module)
        if split == "train":
            self.policy_is_reference = False
        elif self.policy_is_reference and reference is not None:
            return objective(module, reference, batch, self.config, policy=reference)
        return objective(module, reference, batch, self.config)

    def begin_step(self, examples: list[TokenizedPair], shares: int) -> None:
        """Nothing to do: every share of a step holds the same number of pairs, so the mean of the shares' mean
        losses is the step's mean loss."""

    @staticmethod
    def finish(means: dict[str, float]) -> dict[str, float]:
        return means


class SFTObjective:
    """Next-token NLL on trained tokens only; loss = mean over all trained tokens of the micro-batch."""

    name = "sft"
    metric_keys = ("nll", "tokens")
    progress_key = None  # the loss says it all

    def __init__(self, config):
        self.config = config
        self.step_tokens_per_share = None  # set by begin_step for each training step
        row_tokens = (config.tokens_per_row or 2 * config.max_length) if getattr(config, "packing", False) else None
        self.collate = lambda examples, pad_id: collate_sequences(examples, pad_id, row_tokens)

    def wrap(self, model) -> torch.nn.Module:
        return SequenceLogpsModule(model, lean=not self.config.full_logits)

    @staticmethod
    def length(example: TokenizedExample) -> int:
        return len(example.input_ids)

    @staticmethod
    def trained_tokens(example: TokenizedExample) -> int:
        return sum(example.trained[1:])  # the first token is never predicted

    def begin_step(self, examples: list[TokenizedExample], shares: int) -> None:
        """The step's loss is the mean over all its trained tokens. Its `shares` (micro-batches × processes) hold
        different token counts, and accelerate and DDP average the shares' losses; so each share divides its
        summed NLL by the step's count ÷ shares, and the average is exactly the step's token mean (one process
        without accumulation gives the same gradient)."""
        self.step_tokens_per_share = max(sum(map(self.trained_tokens, examples)), 1) / shares

    def __call__(self, module, batch: SequenceBatch, split: str, indices: list[int]):
        logps, tokens = module(batch)
        if split == "train" and self.step_tokens_per_share:
            loss = -logps.sum() / self.step_tokens_per_share
        else:
            loss = sft_nll(logps, tokens)
        return loss, {"nll": -logps.detach(), "tokens": tokens.to(logps.dtype)}

    @staticmethod
    def finish(means: dict[str, float]) -> dict[str, float]:
        """Per-token loss from the per-example sums (the ratio of two means is the ratio of two sums)."""
        out = {}
        for prefix in ("", "eval/"):
            if prefix + "nll" in means:
                out[prefix + "loss"] = means[prefix + "nll"] / max(means[prefix + "tokens"], 1e-9)
                out[prefix + "tokens_per_example"] = means[prefix + "tokens"]
        return out


def bradley_terry(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> LossOutput:
    """The reward model's loss per pair, −log σ(r_chosen − r_rejected): the negative log-likelihood of the preference
    under the Bradley–Terry model (Bradley & Terry 1952), as InstructGPT trains its reward model (Ouyang et al. 2022,
    eq. 1, one comparison per pair). Inputs (B,) each.

        r_chosen = 2, r_rejected = 0  →  −log σ(2) = 0.1269
        r_chosen = r_rejected         →  ln 2 = 0.6931 (the untrained head's neighbourhood)
        r_chosen = 0, r_rejected = 2  →  −log σ(−2) = 2.1269
    """
    losses = -torch.nn.functional.logsigmoid(chosen_rewards - rejected_rewards)  # (B,)
    return LossOutput(losses, chosen_rewards.detach(), rejected_rewards.detach())


class RewardModule(torch.nn.Module):
    """A sequence-classification model over a padded pair batch (collate_pairs: B chosen rows, then B rejected
    rows) → (chosen rewards, rejected rewards), (B,) each.

    A row's reward is the model's last logit at its pooled position: transformers' decoder classifiers pool at the
    rightmost token that is not the pad id (with pad = EOS, the token before a final EOS). dpokit's `hf:` judge
    builds the same token ids for a (prompt, response) and calls the model the same way, so the same text gets the
    same number (judges/classifier.py; tested in tests/integration/test_reward.py)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, batch: PreferenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        scores = self.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits[:, -1]  # (2B,)
        return scores[:batch.num_pairs], scores[batch.num_pairs:]


class RewardObjective:
    """A Bradley–Terry reward model on preference pairs: mean −log σ(r_chosen − r_rejected) over the micro-batch's
    pairs; metrics under DPO's names (the rewards are the model's scores, not implicit ones)."""

    name = "reward"
    metric_keys = REWARD_METRIC_KEYS
    progress_key = "rewards/accuracies"

    def __init__(self, config=None):
        self.config = config
        self.collate = collate_pairs  # prompt+chosen and prompt+rejected rows: each row is what the judge scores

    def wrap(self, model) -> torch.nn.Module:
        return RewardModule(model)

    @staticmethod
    def length(pair: TokenizedPair) -> int:
        return len(pair.prompt_ids) + max(len(pair.chosen_ids), len(pair.rejected_ids))

    def begin_step(self, examples: list[TokenizedPair], shares: int) -> None:
        """Nothing to do: every share holds the same number of pairs (the loss is a mean over pairs)."""

    def __call__(self, module, batch: PreferenceBatch, split: str, indices: list[int]):
        chosen, rejected = module(batch)
        out = bradley_terry(chosen.float(), rejected.float())
        return out.losses.mean(), reward_model_metrics(out)

    @staticmethod
    def finish(means: dict[str, float]) -> dict[str, float]:
        return means
