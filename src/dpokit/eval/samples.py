"""log π(y | x) of whole responses, for KL estimates and implicit rewards of sampled (or given) text.

Policy and reference must see the same token ids: pass ids when you have them (from sampling); the text form
tokenizes prompt and response separately, so both models score exactly the same tokens.
"""
from __future__ import annotations

import torch

from ..data.collate import collate_sequences
from ..logprobs import sequence_logps
from ..types import TokenizedExample


@torch.no_grad()
def response_logps_ids(model, prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int, *,
                       batch_size: int = 8, lean: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of each response given its prompt, and the response lengths in tokens, (N,) each."""
    if len(prompt_ids) != len(response_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(response_ids)} responses")
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    sums, counts = [], []
    for start in range(0, len(prompt_ids), batch_size):
        examples = []
        for prompt, response in zip(prompt_ids[start:start + batch_size], response_ids[start:start + batch_size]):
            if not prompt:
                raise ValueError("a prompt needs at least one token to predict the response from")
            examples.append(TokenizedExample(tuple(prompt) + tuple(response),
                                             (False,) * len(prompt) + (True,) * len(response), "sample"))
        lp, n = sequence_logps(model, collate_sequences(examples, pad_id).to(device), lean=lean)
        sums.append(lp.float().cpu())
        counts.append(n.cpu())
    model.train(was_training)
    return torch.cat(sums), torch.cat(counts)


def response_logps(model, tokenizer, prompts: list[str], responses: list[str], *, batch_size: int = 8,
                   lean: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The text form: `prompts` already rendered (chat template applied if wanted), responses as generated text."""
    prompt_ids = [tokenizer(p, add_special_tokens=True)["input_ids"] for p in prompts]
    response_ids = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in responses]
    return response_logps_ids(model, prompt_ids, response_ids, tokenizer.pad_token_id, batch_size=batch_size, lean=lean)


def kl_estimate(policy_logps: torch.Tensor, reference_logps: torch.Tensor) -> float:
    """Sequence-level KL(π ‖ π_ref) estimated from samples y ~ π: mean of log π(y|x) − log π_ref(y|x)."""
    return float((policy_logps - reference_logps).mean())
