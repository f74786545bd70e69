"""Generation eval: sample k responses per prompt from the policy and from its reference, score them with a reward,
and report mean reward, win rate, KL to the reference and length. `dpokit eval --generate`. Also best-of-N sampling
(`dpokit generate --best-of N`).

    KL(π ‖ π_ref) ≈ mean over policy samples y ~ π(·|x) of  log π(y|x) − log π_ref(y|x)    (sequence level, on the
                    exact sampled token ids; 0 exactly when the policy is the reference)
    win rate      = for each prompt, the k × k comparisons of policy against reference samples under the same
                    reward: win 1, tie 0.5, loss 0; averaged (policy = reference with the same seed → 0.5)
"""
from __future__ import annotations

import statistics
from pathlib import Path

import torch

from ..data.prepare import prompt_key
from ..errors import UserError
from ..generate import generate, read_prompts
from .files import default_out, is_run_dir, load_models, prepare_out, resolve_models, write_json, write_jsonl
from ..judges import Sample, load_judge
from ..judges.implicit import add_logps
from .intervals import bootstrap_mean


def kl_estimate(policy_logps: torch.Tensor, reference_logps: torch.Tensor) -> float:
    """Sequence-level KL(π ‖ π_ref) estimated from samples y ~ π: mean of log π(y|x) − log π_ref(y|x)."""
    return float((policy_logps - reference_logps).mean())


def draw(model, tokenizer, prompts: list, k: int, **sampling) -> list[Sample]:
    """k samples per prompt, prompt-major ([p0 s0, p0 s1, ..., p1 s0, ...]), with the exact ids sampled."""
    flat = [p for p in prompts for _ in range(k)]
    return [Sample(p, s.text, s.prompt_ids, s.completion_ids)
            for p, s in zip(flat, generate(model, tokenizer, prompts, return_ids=True, per_prompt=k, **sampling))]


def prompt_win_rates(policy_rewards: list[float], reference_rewards: list[float], k: int) -> list[float]:
    """Per prompt, the mean of its k × k (policy, reference) sample comparisons: win 1, tie 0.5, loss 0.

    prompt_win_rates([3, 3, 0, 0], [1, 1, 1, 1], k=2) = [1.0, 0.0] (prompt 1 all wins, prompt 2 all losses)."""
    rates = []
    for start in range(0, len(policy_rewards), k):
        scores = [1.0 if p > r else 0.5 if p == r else 0.0
                  for p in policy_rewards[start:start + k] for r in reference_rewards[start:start + k]]
        rates.append(sum(scores) / len(scores))
    return rates


def win_rate(policy_rewards: list[float], reference_rewards: list[float], k: int) -> float:
    """Mean over prompts and over the k × k (policy, reference) sample comparisons: win 1, tie 0.5, loss 0.

    win_rate([2, 0], [1, 1], k=2) = (1 + 1 + 0 + 0) / 4 = 0.5 (one prompt, two samples each)."""
    return statistics.fmean(prompt_win_rates(policy_rewards, reference_rewards, k))


def evaluate_generation(policy, reference, tokenizer, prompts: list, reward, *, k: int, batch_size: int = 8,
                        **sampling) -> tuple[dict, list[dict]]:
    """(summary, sample rows). Both models sample with the same seed; every sample gets log π and log π_ref."""
    policy_samples = draw(policy, tokenizer, prompts, k, batch_size=batch_size, **sampling)
    reference_samples = draw(reference, tokenizer, prompts, k, batch_size=batch_size, **sampling)
    for samples in (policy_samples, reference_samples):
        add_logps(samples, policy, reference, tokenizer.pad_token_id, batch_size=batch_size)
    policy_rewards, reference_rewards = reward(policy_samples), reward(reference_samples)
    kl = kl_estimate(torch.tensor([s.policy_logps for s in policy_samples]),
                     torch.tensor([s.reference_logps for s in policy_samples]))
    summary = {"prompts": len(prompts), "k": k, "reward/policy": statistics.fmean(policy_rewards),
               "reward/reference": statistics.fmean(reference_rewards),
               "win_rate": win_rate(policy_rewards, reference_rewards, k),
               # prompts are the independent units (a prompt's k samples are not): resample prompts
               "win_rate_ci": list(bootstrap_mean(prompt_win_rates(policy_rewards, reference_rewards, k))),
               "kl": kl,
               "length/policy": statistics.fmean(len(s.response_ids) for s in policy_samples),
               "length/reference": statistics.fmean(len(s.response_ids) for s in reference_samples)}
    rows = []
    for source, samples, rewards in (("policy", policy_samples, policy_rewards),
                                     ("reference", reference_samples, reference_rewards)):
        for i, (s, value) in enumerate(zip(samples, rewards)):
            rows.append({"source": source, "prompt_index": i // k, "sample": i % k, "prompt": s.prompt,
                         "response": s.response, "reward": value, "tokens": len(s.response_ids),
                         "logps": s.policy_logps, "reference_logps": s.reference_logps})
    return summary, rows


def format_summary(s: dict) -> str:
    lines = [f"dpokit eval --generate: {s['prompts']} prompts × {s['k']} samples, reward {s['reward']}",
             f"  model     {s['model']}", f"  reference {s['ref']}",
             f"  {'':<26}{'policy':>10}{'reference':>11}",
             f"  {'mean reward':<26}{s['reward/policy']:>10.4f}{s['reward/reference']:>11.4f}",
             f"  {'mean length (tokens)':<26}{s['length/policy']:>10.1f}{s['length/reference']:>11.1f}",
             f"  {'win rate vs reference':<26}{s['win_rate']:>10.4f}     95% interval {s['win_rate_ci'][0]:.4f} – "
             f"{s['win_rate_ci'][1]:.4f} over prompts (ties 0.5; 0.5 = no better)",
             f"  {'KL to reference (nats)':<26}{s['kl']:>10.4f}     (mean log π − log π_ref of policy samples)",
             f"  samples: {s['out']}/samples.jsonl"]
    return "\n".join(lines)


def eval_prompts(args, models) -> tuple[list, str, bool]:
    """(prompts, where from, use the chat template for text prompts). --prompts FILE: as `dpokit generate` reads
    it; --data FILE: the distinct prompts of its pairs (or of the run's --split). Text prompts go through the chat
    template as the run trained them (unless --no-chat-template)."""
    from .preference import uses_chat_template

    template = uses_chat_template(args)
    if args.prompts:
        prompts = [p for _, p in read_prompts(args.prompts)]
        where = args.prompts
    else:
        from .preference import eval_pairs

        pairs, where = eval_pairs(models, args.data, args.split, bool(args.skip_invalid), args.columns,
                                   args.pairs)
        seen, prompts = set(), []
        for pair in pairs:
            if prompt_key(pair) not in seen:
                seen.add(prompt_key(pair))
                prompts.append(list(pair.prompt) if pair.is_conversational else pair.prompt)
    if args.max_prompts is not None:
        prompts = prompts[:args.max_prompts]
    return prompts, where, template


def generation_command(args) -> int:
    from .preference import setting

    if args.prompts and args.data:
        raise UserError("give --prompts FILE or --data FILE, not both")
    if args.k < 1:
        raise UserError(f"--k must be at least 1, got {args.k}")
    models = resolve_models(args.model, args.ref, allow_pickle=args.allow_pickle)
    beta = setting(args.beta, models.run_config, "beta", 0.1)
    out = Path(args.output) if args.output else default_out(models, "eval-generate")
    if out.exists() and out.is_dir() and any(out.iterdir()) and not args.overwrite:
        prepare_out(out, False)  # fail before any model loads
    prompts, where, template = eval_prompts(args, models)
    policy, reference, tokenizer = load_models(models, dtype=args.dtype, allow_pickle=args.allow_pickle)
    reward = load_judge(args.reward, policy=policy, reference=reference, beta=beta, pad_id=tokenizer.pad_token_id,
                         batch_size=args.batch_size)
    summary, rows = evaluate_generation(policy, reference, tokenizer, prompts, reward, k=args.k,
                                        batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                                        temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                                        template=template)
    summary = {**summary, "reward": args.reward, "beta": beta, "model": models.model, "ref": models.ref,
               "prompts_from": where, "temperature": args.temperature, "top_p": args.top_p, "seed": args.seed,
               "max_new_tokens": args.max_new_tokens, "out": str(out)}
    prepare_out(out, args.overwrite)
    write_jsonl(out / "samples.jsonl", rows)
    write_json(out / "summary.json", summary)
    print(format_summary(summary))
    return 0


def best_of_file(model: str, prompts_path: str, out_path: str, *, n: int, judge_ref: str | None, reward: str,
                 beta: float, overwrite: bool = False, template: bool = True, batch_size: int = 8,
                 **sampling) -> int:
    """`dpokit generate --best-of N`: N samples per prompt, keep the highest-reward one; rows record all N."""
    out = Path(out_path)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; choose another --out or pass --overwrite")
    if n < 1:
        raise UserError(f"--best-of must be at least 1, got {n}")
    if beta <= 0:
        raise UserError(f"--beta must be > 0, got {beta}")
    implicit = reward == "implicit"
    if implicit and judge_ref is None and not is_run_dir(Path(model).expanduser()):
        raise UserError("--best-of ranks samples by the implicit reward β·(log π − log π_ref): pass --judge-ref "
                        "(the model this one was trained from), or --reward hf:PATH / py:MODULE:FUNCTION")
    rows = read_prompts(prompts_path)  # bad input fails before any weights load
    models = resolve_models(model, judge_ref if implicit else None, need_ref=implicit)
    policy, reference, tokenizer = load_models(models)
    score = load_judge(reward, policy=policy, reference=reference, beta=beta, pad_id=tokenizer.pad_token_id,
                        batch_size=batch_size)
    samples = draw(policy, tokenizer, [p for _, p in rows], n, batch_size=batch_size, template=template, **sampling)
    scores = score(samples)
    results = []
    for i, (row, prompt) in enumerate(rows):
        mine = scores[i * n:(i + 1) * n]
        best = max(range(n), key=lambda j: mine[j])  # the first of equal scores
        results.append({**row, "prompt": prompt, "completion": samples[i * n + best].response, "best_of": n,
                        "best_index": best, "scores": mine,
                        "candidates": [s.response for s in samples[i * n:(i + 1) * n]], "reward": reward})
    out.parent.mkdir(parents=True, exist_ok=True)
    write_jsonl(out, results)
    return len(rows)
