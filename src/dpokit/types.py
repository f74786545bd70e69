"""The artifacts passed between stages: load → adapt → validate → tokenize → batch → log-probs → loss."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch

# A chat message as the tokenizer's chat template expects it.
Message = dict  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass(frozen=True)
class PreferencePair:
    """One canonical preference pair, whatever shape the file had.

    ``prompt`` is plain text (completions are appended verbatim, then EOS) or a tuple of chat
    messages (completions are rendered as one assistant message by the chat template).
    ``origin`` says where the row came from ("data.jsonl:12") so later stages can name it.
    """

    prompt: Union[str, tuple]
    chosen: str
    rejected: str
    origin: str
    margin: float | None = None  # optional preference strength, used by `odpo`

    @property
    def is_conversational(self) -> bool:
        return not isinstance(self.prompt, str)


@dataclass(frozen=True)
class TokenizedPair:
    """Token ids of one pair. Completion ids start right after the prompt ids."""

    prompt_ids: tuple[int, ...]
    chosen_ids: tuple[int, ...]
    rejected_ids: tuple[int, ...]
    origin: str
    margin: float | None = None
    truncated: bool = False


@dataclass
class PreferenceBatch:
    """A padded batch of 2B sequences: rows [0, B) are chosen, rows [B, 2B) are rejected.

    ``loss_mask`` marks the completion tokens whose log-probs are summed (shifted: mask[t] refers to
    the prediction of input_ids[t] from positions < t).
    """

    input_ids: torch.Tensor  # (2B, T)
    attention_mask: torch.Tensor  # (2B, T)
    loss_mask: torch.Tensor  # (2B, T) bool
    margins: torch.Tensor | None  # (B,) or None
    origins: list[str]

    @property
    def num_pairs(self) -> int:
        return self.input_ids.shape[0] // 2

    def to(self, device) -> "PreferenceBatch":
        return PreferenceBatch(
            self.input_ids.to(device),
            self.attention_mask.to(device),
            self.loss_mask.to(device),
            None if self.margins is None else self.margins.to(device),
            self.origins,
        )


@dataclass
class LossOutput:
    """What every loss returns: per-pair losses and the implicit rewards (β · log-ratio)."""

    losses: torch.Tensor  # (B,)
    chosen_rewards: torch.Tensor  # (B,) detached
    rejected_rewards: torch.Tensor  # (B,) detached
