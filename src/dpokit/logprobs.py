"""Per-token and per-sequence log-probs of completion tokens.

Two ways to the same numbers (tests prove they agree):
- the obvious one: ``model(...).logits`` over every position, then log-softmax and gather;
- the lean one: the decoder's hidden states, then the LM head and log-softmax only at completion positions, in
  chunks, inside an autograd function that recomputes each chunk's logits in backward, so the full
  [tokens × vocabulary] logits never exist, forward or backward.
"""
from __future__ import annotations

import torch

from .data.collate import collate_sequences
from .losses import PairLogps
from .types import PreferenceBatch, SequenceBatch, TokenizedExample

CHUNK_ROWS = 1024  # completion positions per LM-head chunk: (1024 × V) float32 logits at a time


class HeadLogProbs(torch.autograd.Function):
    """log softmax(hidden @ weightᵀ)[label] for selected rows, chunked; backward recomputes each chunk."""

    @staticmethod
    def forward(ctx, hidden, weight, labels, chunk):  # hidden (N, H), weight (V, H), labels (N,)
        out = torch.empty(hidden.shape[0], dtype=torch.float32, device=hidden.device)
        lse = torch.empty_like(out)
        for i in range(0, hidden.shape[0], chunk):
            logits = (hidden[i:i + chunk] @ weight.T).float()  # (c, V)
            lse[i:i + chunk] = torch.logsumexp(logits, dim=-1)
            out[i:i + chunk] = logits.gather(-1, labels[i:i + chunk, None]).squeeze(-1) - lse[i:i + chunk]
        ctx.save_for_backward(hidden, weight, labels, lse)
        ctx.chunk = chunk
        return out

    @staticmethod
    def backward(ctx, grad_out):
        hidden, weight, labels, lse = ctx.saved_tensors
        grad_hidden = torch.zeros_like(hidden) if ctx.needs_input_grad[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if ctx.needs_input_grad[1] else None
        for i in range(0, hidden.shape[0], ctx.chunk):
            h = hidden[i:i + ctx.chunk]
            g = grad_out[i:i + ctx.chunk].float()  # (c,)
            probs = torch.exp((h @ weight.T).float() - lse[i:i + ctx.chunk, None])  # (c, V)
            grad_logits = -probs * g[:, None]
            grad_logits.scatter_add_(-1, labels[i:i + ctx.chunk, None], g[:, None])  # d/dlogit of the picked token
            grad_logits = grad_logits.to(hidden.dtype)
            if grad_hidden is not None:
                grad_hidden[i:i + ctx.chunk] = grad_logits @ weight
            if grad_weight is not None:
                grad_weight += (grad_logits.T @ h).float()
        if grad_weight is not None:
            grad_weight = grad_weight.to(weight.dtype)
        return grad_hidden, grad_weight, None, None


def lean_head_supported(model) -> bool:
    """The lean path needs a plain linear LM head on a decoder; anything fancier uses the obvious path."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    cfg = getattr(model, "config", None)
    fancy = any(getattr(cfg, name, None) for name in ("final_logit_softcapping", "logit_scale", "logits_scaling"))
    return (isinstance(head, torch.nn.Linear) and head.bias is None and hasattr(model, "get_decoder")
            and not fancy and type(model).__name__.endswith("ForCausalLM"))


def completion_logps(model, input_ids, attention_mask, sources: torch.Tensor, targets: torch.Tensor,
                     position_ids=None, lean: bool = True) -> torch.Tensor:
    """log π(input_ids[targets] | hidden at sources), flattened over the batch, (K,).

    ``sources`` / ``targets`` are flat indices into the (rows × T) grid: the token at ``targets[k]`` is predicted
    from the position ``sources[k]`` (normally targets − 1; with prompt sharing, the first rejected token is
    predicted from the last prompt token).
    """
    flat_ids = input_ids.reshape(-1)
    if attention_mask.dim() == 4:  # a boolean (rows, 1, T, T) mask → additive, as eager and SDPA attention expect
        dtype = next(model.parameters()).dtype
        attention_mask = torch.zeros(attention_mask.shape, dtype=dtype, device=attention_mask.device).masked_fill(
            ~attention_mask, torch.finfo(dtype).min)
    if lean and lean_head_supported(model):
        hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                                     use_cache=False).last_hidden_state  # (N, T, H)
        picked = hidden.reshape(-1, hidden.shape[-1])[sources]  # (K, H)
        weight = model.get_output_embeddings().weight  # (V, H)
        return HeadLogProbs.apply(picked, weight, flat_ids[targets], CHUNK_ROWS)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                   use_cache=False).logits  # (N, T, V)
    picked = logits.reshape(-1, logits.shape[-1])[sources].float()  # (K, V): only completion positions
    return picked.gather(-1, flat_ids[targets, None]).squeeze(-1) - torch.logsumexp(picked, dim=-1)


def batch_logps(model, batch: PreferenceBatch, lean: bool = True) -> PairLogps:
    """Summed completion log-probs per pair, for either batch layout (padded rows or prompt-shared rows)."""
    token_lp = completion_logps(model, batch.input_ids, batch.attention_mask, batch.sources, batch.targets,
                                position_ids=batch.position_ids, lean=lean)  # (K,)
    b = batch.num_pairs
    sums = torch.zeros(2 * b, dtype=token_lp.dtype, device=token_lp.device).index_add(0, batch.owners, token_lp)
    counts = torch.bincount(batch.owners, minlength=2 * b)
    return PairLogps(sums[:b], sums[b:], counts[:b], counts[b:])


class PairLogpsModule(torch.nn.Module):
    """The policy as a module whose forward returns pair log-probs.

    Distributed wrappers (DDP, FSDP) synchronise gradients through their module's forward; the lean path reaches
    into the decoder and the LM head, so it must run inside one forward, not around it. The forward returns a
    plain tuple (chosen, rejected, chosen_tokens, rejected_tokens), because DeepSpeed ZeRO-3 hooks its backward
    gathers onto a module's output tensors and sees through tuples only; `PairLogps(*out)` rebuilds the record.
    """

    def __init__(self, model, lean: bool = True):
        super().__init__()
        self.model, self.lean = model, lean
        # FSDP's auto-wrap (accelerate's TRANSFORMER_BASED_WRAP) reads the layer classes to shard from here
        self._no_split_modules = list(getattr(model, "_no_split_modules", None) or [])

    def forward(self, batch: PreferenceBatch) -> tuple[torch.Tensor, ...]:
        out = batch_logps(self.model, batch, lean=self.lean)
        return out.chosen, out.rejected, out.chosen_tokens, out.rejected_tokens


def sequence_logps(model, batch: SequenceBatch, lean: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed log-probs of each SFT example's trained tokens and their counts, (B,) each."""
    token_lp = completion_logps(model, batch.input_ids, batch.attention_mask, batch.sources, batch.targets,
                                position_ids=batch.position_ids, lean=lean)  # (K,)
    b = batch.num_examples
    sums = torch.zeros(b, dtype=token_lp.dtype, device=token_lp.device).index_add(0, batch.owners, token_lp)
    return sums, torch.bincount(batch.owners, minlength=b)


class SequenceLogpsModule(torch.nn.Module):
    """The SFT counterpart of PairLogpsModule: forward returns (summed log-probs, token counts) per example."""

    def __init__(self, model, lean: bool = True):
        super().__init__()
        self.model, self.lean = model, lean
        self._no_split_modules = list(getattr(model, "_no_split_modules", None) or [])  # as PairLogpsModule

    def forward(self, batch: SequenceBatch) -> tuple[torch.Tensor, torch.Tensor]:
        return sequence_logps(self.model, batch, lean=self.lean)


# ---- whole responses: log π(y | x) of sampled (or given) text, for KL estimates, implicit rewards and the probe ----
# Policy and reference must see the same token ids: pass ids when you have them (from sampling); the text form
# tokenizes prompt and response separately, so both models score exactly the same tokens.

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
