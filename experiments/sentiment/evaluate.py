"""Evaluation on held-out prefixes: mean true reward per method and temperature, KL to the SFT model at T = 1."""
from __future__ import annotations

import gc
from pathlib import Path

import numpy as np

from dpokit.generate import load_for_generation
from sampling import Samples, best_of_n_kl_bound, sample, sequence_kl


def evaluate(models: dict[str, Path], reference_dir: Path, prompts: list[str], reward, sizes, seed: int) -> dict:
    """{"methods": {name: {"kl", "kl_kind", "reward": {T: mean}, "reward_se": {T: se}}}, "checkpoints", "examples"}.

    SFT and best-of-N share one set of SFT samples per temperature (N_max per prompt): SFT = the mean over all of
    them; best-of-N = the mean over disjoint groups of N of each group's highest reward (so on the same samples
    best-of-16 ≥ best-of-4 ≥ SFT always). KL is measured at temperature 1, the policy's own distribution."""
    reference, tokenizer = load_for_generation(reference_dir)
    pad = tokenizer.pad_token_id
    n_max = max(sizes.best_of)
    results = {"SFT": {"kl_kind": "measured", "reward": {}, "reward_se": {}}}
    results.update({f"best-of-{n}": {"kl": best_of_n_kl_bound(n), "kl_kind": "analytic bound log N − (N−1)/N",
                                     "reward": {}} for n in sizes.best_of})
    examples = {}
    for t in sizes.temperatures:
        s = sample(reference, tokenizer, prompts, n=n_max, max_new_tokens=sizes.max_new_tokens, temperature=t,
                   seed=seed, batch_size=sizes.generate_batch)
        s.rewards = reward(s.texts())
        by_prompt = s.by_prompt()  # (P, n_max)
        results["SFT"]["reward"][t] = float(by_prompt.mean())
        results["SFT"]["reward_se"][t] = standard_error(by_prompt)
        for n in sizes.best_of:
            groups = by_prompt[:, : n_max // n * n].reshape(len(prompts), n_max // n, n)  # (P, groups, n)
            results[f"best-of-{n}"]["reward"][t] = float(groups.max(axis=2).mean())
        if t == 1.0:
            first = Samples(s.prompts, 1, s.prompt_ids[::n_max], s.response_ids[::n_max], s.completions[::n_max])
            results["SFT"]["kl"] = sequence_kl(reference, reference, first, pad)  # 0 by construction: a check
            examples["SFT"] = example_rows(s)
    for name, folder in models.items():
        policy, _ = load_for_generation(folder)
        results[name] = {"kl_kind": "measured", "reward": {}, "reward_se": {}}
        for t in sizes.temperatures:
            s = sample(policy, tokenizer, prompts, n=sizes.policy_samples, max_new_tokens=sizes.max_new_tokens,
                       temperature=t, seed=seed + 1, batch_size=sizes.generate_batch)
            s.rewards = reward(s.texts())
            results[name]["reward"][t] = float(s.rewards.mean())
            results[name]["reward_se"][t] = standard_error(s.by_prompt())
            if t == 1.0:
                results[name]["kl"] = sequence_kl(policy, reference, s, pad)
                examples[name] = example_rows(s)
        del policy
        gc.collect()
    checkpoints = evaluate_checkpoints(models, reference, tokenizer, prompts, reward, sizes, seed)
    return {"methods": results, "checkpoints": checkpoints, "examples": examples}


def evaluate_checkpoints(models: dict[str, Path], reference, tokenizer, prompts: list[str], reward, sizes,
                         seed: int) -> dict:
    """Intermediate checkpoints (run folder's checkpoint-STEP/) at T = 1: {name: [{step, kl, reward}, ...]}."""
    found = {}
    for name, folder in models.items():
        for checkpoint in sorted(folder.parent.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
            policy, _ = load_for_generation(checkpoint)
            s = sample(policy, tokenizer, prompts, n=sizes.policy_samples, max_new_tokens=sizes.max_new_tokens,
                       temperature=1.0, seed=seed + 1, batch_size=sizes.generate_batch)
            s.rewards = reward(s.texts())
            found.setdefault(name, []).append({"step": int(checkpoint.name.split("-")[1]),
                                               "kl": sequence_kl(policy, reference, s, tokenizer.pad_token_id),
                                               "reward": float(s.rewards.mean())})
            del policy
            gc.collect()
    return found


def standard_error(by_prompt: np.ndarray) -> float:
    """Standard error of the mean reward over prompts (samples of one prompt are averaged first: they correlate)."""
    per_prompt = by_prompt.mean(axis=1)  # (P,)
    return float(per_prompt.std(ddof=1) / np.sqrt(len(per_prompt))) if len(per_prompt) > 1 else float("nan")


def example_rows(s: Samples, count: int = 3) -> list[dict]:
    """The first sample of the first `count` prompts, for reading."""
    return [{"prompt": s.prompts[r // s.n], "completion": s.completions[r], "reward": round(float(s.rewards[r]), 3)}
            for r in range(0, min(len(s.completions), count * s.n), s.n)]
