"""Sampling that keeps the exact token ids (so KL is measured on what was sampled), and the KL estimate itself."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from dpokit.eval.generation import kl_estimate
from dpokit.logprobs import response_logps_ids
from dpokit.generate import encode, sampling_args


@dataclass
class Samples:
    """n samples per prompt, row r belongs to prompt r // n. Plain-text prompts (no chat template), as in training."""

    prompts: list[str]
    n: int
    prompt_ids: list[list[int]]
    response_ids: list[list[int]]
    completions: list[str]
    rewards: np.ndarray = field(default_factory=lambda: np.zeros(0))

    def texts(self) -> list[str]:
        """What the reward reads: the whole review, prefix + completion."""
        return [self.prompts[r // self.n] + c for r, c in enumerate(self.completions)]

    def by_prompt(self) -> np.ndarray:
        return self.rewards.reshape(len(self.prompts), self.n)  # (P, n)


def cut_at_eos(ids: list[int], eos: set[int]) -> list[int]:
    """[5, 7, EOS, PAD, PAD] → [5, 7, EOS]: the sampled response, its stop token included (it was sampled too)."""
    for i, token in enumerate(ids):
        if token in eos:
            return ids[: i + 1]
    return ids


@torch.no_grad()
def sample(model, tokenizer, prompts: list[str], *, n: int, max_new_tokens: int, temperature: float, seed: int,
           batch_size: int) -> Samples:
    """n completions per prompt, seeded (the same seed gives the same samples), in left-padded batches."""
    rows = [p for p in prompts for _ in range(n)]
    args = sampling_args(model, tokenizer, max_new_tokens=max_new_tokens, temperature=temperature, top_p=1.0)
    eos = set(args["eos_token_id"])
    prompt_ids, response_ids = [], []
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for start in range(0, len(rows), batch_size):
            batch = encode(tokenizer, rows[start:start + batch_size], special=True)
            out = model.generate(**batch, **args)  # (B, T + new)
            width = batch["input_ids"].shape[1]
            for i in range(out.shape[0]):
                mask = batch["attention_mask"][i].bool()
                prompt_ids.append(batch["input_ids"][i][mask].tolist())
                response_ids.append(cut_at_eos(out[i, width:].tolist(), eos))
    completions = tokenizer.batch_decode(response_ids, skip_special_tokens=True)
    return Samples(list(prompts), n, prompt_ids, response_ids, completions)


def sequence_kl(policy, reference, samples: Samples, pad_id: int, batch_size: int = 32) -> float:
    """KL(π ‖ π_ref) ≈ mean over samples y ~ π of log π(y|x) − log π_ref(y|x), on the sampled token ids."""
    policy_logps, _ = response_logps_ids(policy, samples.prompt_ids, samples.response_ids, pad_id, batch_size=batch_size)
    reference_logps, _ = response_logps_ids(reference, samples.prompt_ids, samples.response_ids, pad_id,
                                            batch_size=batch_size)
    return kl_estimate(policy_logps, reference_logps)


def best_of_n_kl_bound(n: int) -> float:
    """KL of best-of-n sampling to its base policy, the analytic bound log n − (n − 1)/n (Stiennon et al. 2020;
    Beirami et al. 2024 show it is an upper bound, tight when the rewards of samples rarely tie)."""
    return float(np.log(n) - (n - 1) / n)
