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
    strength: float | None = None  # how strongly chosen is preferred (the data's `margin` field), used by `odpo`
    label: bool | None = None  # KTO feedback: `chosen` is the answer (True = desirable), `rejected` a mismatched one

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
    strength: float | None = None
    truncated: bool = False
    label: bool | None = None  # KTO feedback (see PreferencePair)


@dataclass
class PreferenceBatch:
    """A batch of B pairs in one of two layouts, with the completion tokens named by flat indices.

    - padded: 2B rows, rows [0, B) prompt+chosen and [B, 2B) prompt+rejected; ``attention_mask`` is (2B, T).
    - shared: B rows [prompt | chosen | rejected]; ``attention_mask`` is a (B, 1, T, T) boolean mask in which
      rejected tokens see the prompt and themselves but not chosen; ``position_ids`` restart rejected at the
      end of the prompt.
    The token at flat index ``targets[k]`` of ``input_ids`` is predicted from flat position ``sources[k]`` and
    belongs to sequence ``owners[k]`` (pair i's chosen is i, its rejected is B + i).
    """

    input_ids: torch.Tensor  # (rows, T)
    attention_mask: torch.Tensor  # (rows, T) or (rows, 1, T, T) bool
    sources: torch.Tensor  # (K,) long
    targets: torch.Tensor  # (K,) long
    owners: torch.Tensor  # (K,) long in [0, 2B)
    num_pairs: int
    num_tokens: int  # non-padding tokens of chosen and rejected sequences, prompt counted for both
    strengths: torch.Tensor | None  # (B,) preference strengths (odpo), or None
    origins: list[str]
    position_ids: torch.Tensor | None = None  # (rows, T), shared layout only
    loss_mask: torch.Tensor | None = None  # (2B, T) bool, padded layout only
    labels: torch.Tensor | None = None  # (B,) bool, KTO feedback only

    def to(self, device) -> "PreferenceBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return PreferenceBatch(move(self.input_ids), move(self.attention_mask), move(self.sources),
                               move(self.targets), move(self.owners), self.num_pairs, self.num_tokens,
                               move(self.strengths), self.origins, move(self.position_ids), move(self.loss_mask),
                               move(self.labels))


@dataclass
class LossOutput:
    """What every loss returns: per-pair losses and the implicit rewards (β · log-ratio)."""

    losses: torch.Tensor  # (B,)
    chosen_rewards: torch.Tensor  # (B,) detached
    rejected_rewards: torch.Tensor  # (B,) detached
    extras: dict | None = None  # further per-pair metrics, (B,) detached each, e.g. ORPO's log odds


@dataclass(frozen=True)
class SFTExample:
    """One supervised example: a prompt (plain text or chat messages) and an answer made of segments.

    ``segments`` are (text, trained) pieces of the answer in order. Plain SFT has one trained segment; Chain of
    Hindsight interleaves untrained feedback phrases with trained answers.
    """

    prompt: Union[str, tuple]
    segments: tuple[tuple[str, bool], ...]
    origin: str

    @property
    def is_conversational(self) -> bool:
        return not isinstance(self.prompt, str)

    @property
    def answer(self) -> str:
        return "".join(text for text, _ in self.segments)


@dataclass(frozen=True)
class TokenizedExample:
    """Token ids of one SFT example and which of them carry loss (``trained[i]`` is about ``input_ids[i]``)."""

    input_ids: tuple[int, ...]
    trained: tuple[bool, ...]
    origin: str
    truncated: bool = False


@dataclass
class SequenceBatch:
    """B SFT examples, padded (B rows) or packed (several per row, block-diagonal mask, restarted positions).

    As in PreferenceBatch: the token at flat index ``targets[k]`` is predicted from flat position ``sources[k]``
    and belongs to example ``owners[k]``; only trained tokens are listed.
    """

    input_ids: torch.Tensor  # (rows, T)
    attention_mask: torch.Tensor  # (rows, T) or (rows, 1, T, T) bool
    sources: torch.Tensor  # (K,)
    targets: torch.Tensor  # (K,)
    owners: torch.Tensor  # (K,) in [0, B)
    num_examples: int
    num_tokens: int  # non-padding tokens
    origins: list[str]
    position_ids: torch.Tensor | None = None

    def to(self, device) -> "SequenceBatch":
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return SequenceBatch(move(self.input_ids), move(self.attention_mask), move(self.sources), move(self.targets),
                             move(self.owners), self.num_examples, self.num_tokens, self.origins,
                             move(self.position_ids))
