"""Tokenized pairs → one padded PreferenceBatch (chosen rows first, then rejected rows)."""
from __future__ import annotations

import torch

from ..types import PreferenceBatch, TokenizedPair


def collate_pairs(pairs: list[TokenizedPair], pad_id: int) -> PreferenceBatch:
    """Right-pad prompt+chosen and prompt+rejected sequences into 2B rows.

    Worked example (pad_id=0), two pairs:
        pair 1: prompt (5, 6), chosen (7,),   rejected (8, 9)
        pair 2: prompt (5,),   chosen (7, 7), rejected (9,)
    gives
        input_ids  = [[5, 6, 7, 0], [5, 7, 7, 0], [5, 6, 8, 9], [5, 9, 0, 0]]
        loss_mask  = [[0, 0, 1, 0], [0, 1, 1, 0], [0, 0, 1, 1], [0, 1, 0, 0]]
        attention  = [[1, 1, 1, 0], [1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 0, 0]]
    (rows 0–1 are chosen, rows 2–3 rejected; the loss mask marks completion tokens).
    """
    rows = [(p.prompt_ids, p.chosen_ids) for p in pairs] + [(p.prompt_ids, p.rejected_ids) for p in pairs]
    width = max(len(prompt) + len(completion) for prompt, completion in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
    loss_mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, (prompt, completion) in enumerate(rows):
        n_prompt, n = len(prompt), len(prompt) + len(completion)
        input_ids[i, :n] = torch.tensor(prompt + completion, dtype=torch.long)
        attention_mask[i, :n] = 1
        loss_mask[i, n_prompt:n] = True
    margins = None
    if all(p.margin is not None for p in pairs):
        margins = torch.tensor([p.margin for p in pairs], dtype=torch.float32)
    return PreferenceBatch(input_ids, attention_mask, loss_mask, margins, [p.origin for p in pairs])
