"""Where the loop draws each step's training examples from.

A source holds a pool of tokenized examples and answers "which of them does step s use?". The answer depends on the
step alone, so a resumed run sees exactly the data an uninterrupted run would; a command that brings new data each
round (iterate) hands the loop a new source per round instead of a copy of the loop. A source may also make a step's
examples when asked for it, appending them to its pool in place (iterate --online samples them from the policy being
trained, whose weights at step s a resumed run restores from its checkpoint).
"""
from __future__ import annotations

from typing import Protocol, Sequence

import torch

GROUP_WINDOW_BATCHES = 16  # length grouping sorts within windows of this many batches, keeping the order random


class DataSource(Protocol):
    examples: Sequence  # the pool; indices refer to it (it may grow in place, never rebound)

    def indices(self, step: int) -> list[int]:
        """The pool indices used at `step` (0-based); a function of the step alone."""

    def reached(self, steps: int) -> list[int]:
        """Every pool index some step in range(steps) uses, sorted (what the reference cache must hold)."""


def epoch_order(num_pairs: int, epoch: int, seed: int, batch_size: int, lengths: list[int] | None = None) -> list[int]:
    """A seeded permutation of the pairs for one epoch; with `lengths`, sorted longest-first within windows of
    GROUP_WINDOW_BATCHES batches so that a batch holds pairs of similar length (less padding)."""
    perm = torch.randperm(num_pairs, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    if lengths is None:
        return perm
    window = batch_size * GROUP_WINDOW_BATCHES
    return [i for w in range(0, num_pairs, window) for i in sorted(perm[w:w + window], key=lambda i: -lengths[i])]


def pair_order(num_pairs: int, step: int, batch_size: int, seed: int, lengths: list[int] | None = None) -> list[int]:
    """Indices of the pairs used at `step` (0-based): a flat stream of seeded per-epoch orders."""
    start, stop = step * batch_size, (step + 1) * batch_size
    out, epoch = [], start // num_pairs
    while len(out) < batch_size:
        order = epoch_order(num_pairs, epoch, seed, batch_size, lengths)
        lo = max(start - epoch * num_pairs, 0)
        hi = min(stop - epoch * num_pairs, num_pairs)
        out += order[lo:hi]
        epoch += 1
    return out


class ShuffledSource:
    """The pool in seeded per-epoch orders, `batch_size` examples per step; with `lengths`, grouped by length."""

    def __init__(self, examples: Sequence, batch_size: int, seed: int, lengths: list[int] | None = None):
        if not examples:
            raise ValueError("a data source needs at least one example")
        self.examples, self.batch_size, self.seed, self.lengths = examples, batch_size, seed, lengths

    @classmethod
    def for_run(cls, examples: Sequence, config, length=None) -> "ShuffledSource":
        """The source a training command draws from: its batch size and seed, grouped by `length` with
        --group-by-length."""
        lengths = [length(e) for e in examples] if config.group_by_length and length else None
        return cls(examples, config.batch_size, config.seed, lengths)

    def indices(self, step: int) -> list[int]:
        return pair_order(len(self.examples), step, self.batch_size, self.seed, self.lengths)

    def reached(self, steps: int) -> list[int]:
        n = len(self.examples)
        stream = steps * self.batch_size  # positions in the flat stream of epoch orders
        if stream >= n:
            return list(range(n))  # a whole epoch reaches every example
        return sorted(epoch_order(n, 0, self.seed, self.batch_size, self.lengths)[:stream])
