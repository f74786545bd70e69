"""Per-token and per-sequence log-probs of completion tokens."""
from __future__ import annotations

import torch

from .losses import PairLogps
from .types import PreferenceBatch


def token_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """log softmax(logits)[label] per position without materialising the full log-softmax.

    Equals ``logits.log_softmax(-1).gather(-1, labels[..., None])[..., 0]``; done row by row so the
    (T, V) float32 copy exists for one sequence at a time, not for the whole batch.
    """
    out = torch.empty(labels.shape, dtype=torch.float32, device=logits.device)
    for row in range(logits.shape[0]):
        row_logits = logits[row].float()  # (T, V)
        picked = row_logits.gather(-1, labels[row].unsqueeze(-1)).squeeze(-1)  # (T,)
        out[row] = picked - torch.logsumexp(row_logits, dim=-1)
    return out


def sequence_logps(logits: torch.Tensor, input_ids: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Sum of log π(token) over completion tokens, (N,). Position t predicts input_ids[t + 1]."""
    labels = input_ids[:, 1:]  # (N, T-1)
    mask = loss_mask[:, 1:]
    per_token = token_logps(logits[:, :-1], labels)  # (N, T-1)
    return (per_token * mask).sum(-1)


def batch_logps(model, batch: PreferenceBatch) -> PairLogps:
    """One forward over chosen and rejected rows together; returns per-pair summed log-probs."""
    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits  # (2B, T, V)
    logps = sequence_logps(logits, batch.input_ids, batch.loss_mask)  # (2B,)
    tokens = batch.loss_mask[:, 1:].sum(-1)  # (2B,)
    b = batch.num_pairs
    return PairLogps(logps[:b], logps[b:], tokens[:b], tokens[b:])
