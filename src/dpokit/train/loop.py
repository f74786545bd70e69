"""The DPO training loop, top to bottom: schedule → eval/checkpoint → micro-steps → clip → step → log."""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.collate import collator
from ..logprobs import PairLogpsModule
from ..losses import LOSSES, PairLogps, chosen_nll
from ..types import PreferenceBatch, TokenizedPair
from ..errors import NonFiniteError, UserError
from .checkpoint import latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint
from .metrics import MetricsLog, MetricSums, pair_metrics


GROUP_WINDOW_BATCHES = 16  # length grouping sorts within windows of this many batches, keeping the order random


def epoch_order(num_pairs: int, epoch: int, seed: int, batch_size: int, lengths: list[int] | None = None) -> list[int]:
    """A seeded permutation of the pairs for one epoch; with `lengths`, sorted longest-first within windows of
    GROUP_WINDOW_BATCHES batches so that a batch holds pairs of similar length (less padding)."""
    perm = torch.randperm(num_pairs, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    if lengths is None:
        return perm
    window = batch_size * GROUP_WINDOW_BATCHES
    return [i for w in range(0, num_pairs, window) for i in sorted(perm[w:w + window], key=lambda i: -lengths[i])]


def pair_order(num_pairs: int, step: int, batch_size: int, seed: int, lengths: list[int] | None = None) -> list[int]:
    """Indices of the pairs used at `step` (0-based): a flat stream of seeded per-epoch orders.

    Derivable from the step alone, so a resumed run sees exactly the data an uninterrupted run would.
    """
    start, stop = step * batch_size, (step + 1) * batch_size
    out, epoch = [], start // num_pairs
    while len(out) < batch_size:
        order = epoch_order(num_pairs, epoch, seed, batch_size, lengths)
        lo = max(start - epoch * num_pairs, 0)
        hi = min(stop - epoch * num_pairs, num_pairs)
        out += order[lo:hi]
        epoch += 1
    return out


def pair_lengths(pairs: list[TokenizedPair]) -> list[int]:
    return [len(p.prompt_ids) + max(len(p.chosen_ids), len(p.rejected_ids)) for p in pairs]


def pairs_reached(config, train_pairs: list[TokenizedPair]) -> list[int]:
    """Every training pair index some step of this run will use (the reference cache fills only these)."""
    n = len(train_pairs)
    lengths = pair_lengths(train_pairs) if config.group_by_length else None
    stream = total_steps(config, n) * config.batch_size  # positions in the flat stream of epoch orders
    if stream >= n:
        return list(range(n))  # a whole epoch reaches every pair
    return sorted(epoch_order(n, 0, config.seed, config.batch_size, lengths)[:stream])


def objective(policy_model, reference_logps: PairLogps, batch: PreferenceBatch, config):
    """Loss of one micro-batch (mean over its pairs) and its per-pair metrics.

    `policy_model` is a PairLogpsModule (possibly inside a DDP wrapper): calling it gives the pair log-probs.
    """
    policy = policy_model(batch)
    out = LOSSES[config.loss].fn(policy, reference_logps, beta=config.beta, label_smoothing=config.label_smoothing,
                                 margins=batch.margins, odpo_alpha=config.odpo_alpha)
    losses = out.losses
    if config.sft_weight:
        losses = losses + config.sft_weight * chosen_nll(policy)
    return losses.mean(), pair_metrics(out, policy)


@torch.no_grad()
def evaluate(policy_model, reference_cache: list[PairLogps], batches: list[PreferenceBatch], config,
             accelerator) -> dict[str, float]:
    was_training = policy_model.training
    policy_model.eval()
    sums = MetricSums()
    for batch, ref in zip(batches, reference_cache):
        _, metrics = objective(policy_model, ref, batch, config)
        sums.add(metrics)
    policy_model.train(was_training)
    return sums.reduce(accelerator).means(prefix="eval/")


def nonfinite_message(step: int, origins: list[str], run_dir: Path) -> str:
    last = latest_checkpoint(run_dir)
    kept = f"last good checkpoint: {last}" if last else "no checkpoint was written yet"
    shown = ", ".join(origins[:8]) + (f" and {len(origins) - 8} more" if len(origins) > 8 else "")
    return (f"non-finite loss or gradient at step {step} (pairs {shown}); {kept}. Lower --learning-rate, check "
            "those pairs, or pass --skip-nonfinite to skip such steps")


def accumulate_gradients(policy, reference, micro_batches: list[tuple[PreferenceBatch, list[int]]], config, accelerator):
    """Forward and backward over one step's micro-batches; returns metrics, tokens and whether the loss was finite."""
    sums, tokens, finite = MetricSums(), 0, True
    for batch, indices in micro_batches:
        batch = batch.to(accelerator.device)
        ref = reference.logps(batch, "train", indices)
        loss, metrics = objective(policy, ref, batch, config)
        finite = finite and bool(torch.isfinite(loss))
        accelerator.backward(loss / len(micro_batches))
        sums.add(metrics)
        tokens += batch.num_tokens
    totals = accelerator.reduce(torch.tensor([tokens, int(not finite)], device=accelerator.device), "sum")
    return sums.reduce(accelerator), int(totals[0]), int(totals[1]) == 0  # every rank takes the same decision


def restore(run_dir: Path, config, model, optimizer, scheduler) -> dict:
    """With --resume: load the newest checkpoint; returns the step and running totals to continue from."""
    resumed = {"step": 0, "tokens": 0, "skipped_nonfinite": 0}
    checkpoint = latest_checkpoint(run_dir) if config.resume else None
    if checkpoint is not None:
        resumed.update(load_checkpoint(checkpoint, model, optimizer, scheduler))
    return resumed


def prepare_eval(eval_pairs, collate, pad_id: int, micro_size: int, reference, accelerator):
    """This rank's held-out batches and their reference log-probs, which never change: computed once per run."""
    mine = list(range(accelerator.process_index, len(eval_pairs), accelerator.num_processes))
    chunks = [mine[i:i + micro_size] for i in range(0, len(mine), micro_size)]
    batches = [collate([eval_pairs[i] for i in idx], pad_id).to(accelerator.device) for idx in chunks]
    refs = [reference.logps(b, "eval", idx) for idx, b in zip(chunks, batches)]
    return batches, refs


def total_steps(config, num_pairs: int) -> int:
    if config.max_steps is not None:
        return config.max_steps
    return max(1, math.ceil(config.epochs * num_pairs / config.batch_size))


def make_scheduler(optimizer, config, steps: int):
    from transformers import get_scheduler

    name = {"linear": "linear", "cosine": "cosine", "constant": "constant_with_warmup"}[config.lr_schedule]
    return get_scheduler(name, optimizer, num_warmup_steps=config.warmup_steps, num_training_steps=steps)


def train_dpo(policy, reference, tokenizer, train_pairs: list[TokenizedPair], eval_pairs: list[TokenizedPair],
              config, run_dir: Path, accelerator=None) -> dict:
    """Train `policy` against `reference` (a LiveReference or CachedReference); returns eval metrics and totals."""
    from accelerate import Accelerator

    accelerator = accelerator or Accelerator(cpu=not torch.cuda.is_available())
    torch.manual_seed(config.seed)
    pad_id = tokenizer.pad_token_id
    lengths = pair_lengths(train_pairs) if config.group_by_length else None
    collate = collator(config)
    micro_size = config.batch_size // config.grad_accum
    rank, world = accelerator.process_index, accelerator.num_processes
    if micro_size % world:
        raise UserError(f"batch_size: {config.batch_size} pairs in {config.grad_accum} micro-batches do not split "
                        f"evenly over {world} processes; make batch-size a multiple of grad-accum × {world}")
    steps = total_steps(config, len(train_pairs))
    main = accelerator.is_main_process

    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, config, steps)
    policy, optimizer = accelerator.prepare(PairLogpsModule(policy, lean=not config.full_logits), optimizer)
    unwrap = lambda: accelerator.unwrap_model(policy).model  # noqa: E731  the plain HF model
    if hasattr(reference, "model"):
        reference.model.to(accelerator.device)

    resumed = restore(run_dir, config, unwrap(), optimizer, scheduler)
    start_step = resumed["step"]
    log = MetricsLog(run_dir / "metrics.jsonl", resume_step=start_step if config.resume else None, writer=main)

    eval_batches, eval_reference = prepare_eval(eval_pairs, collate, pad_id, micro_size // world, reference, accelerator)
    first_eval = evaluate(policy, eval_reference, eval_batches, config, accelerator) if eval_pairs and not start_step else {}
    if first_eval:
        log.write({"step": 0, **first_eval})
    last_eval = first_eval

    tokens_seen, skipped_steps = resumed["tokens"], resumed["skipped_nonfinite"]  # running totals continue
    started, tokens_at_start = time.time(), tokens_seen
    bar = tqdm(total=steps, initial=start_step, desc="dpo", unit="step", dynamic_ncols=True, disable=not main)
    for step in range(start_step, steps):
        step_started = time.time()
        indices = pair_order(len(train_pairs), step, config.batch_size, config.seed, lengths)
        # Each process takes its share of every micro-batch; DDP averages the gradients of the shares.
        micro_indices = [indices[m * micro_size:(m + 1) * micro_size][rank::world] for m in range(config.grad_accum)]
        micro_batches = [(collate([train_pairs[i] for i in idx], pad_id), idx) for idx in micro_indices]
        sums, step_tokens, finite = accumulate_gradients(policy, reference, micro_batches, config, accelerator)
        grad_norm = accelerator.clip_grad_norm_(policy.parameters(), config.max_grad_norm or float("inf"))
        done = step + 1
        if finite and torch.isfinite(grad_norm):
            optimizer.step()
        elif config.skip_nonfinite:
            skipped_steps += 1  # no update; the schedule and the data order move on as if it had happened
        else:
            raise NonFiniteError(nonfinite_message(done, [train_pairs[i].origin for i in indices], run_dir))
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)

        tokens_seen += step_tokens
        record = {"step": done, "epoch": done * config.batch_size / len(train_pairs), **sums.means(),
                  "skipped_nonfinite": skipped_steps,
                  "grad_norm": float(grad_norm), "lr": scheduler.get_last_lr()[0], "tokens": tokens_seen,
                  "tokens_per_s": step_tokens / max(time.time() - step_started, 1e-9)}
        if eval_pairs and (done == steps or config.eval_every and done % config.eval_every == 0):
            last_eval = evaluate(policy, eval_reference, eval_batches, config, accelerator)
            record.update(last_eval)
        if done % config.log_every == 0 or done == steps:
            log.write(record)
        if config.save_every and done % config.save_every == 0 and done != steps:
            if main:
                save_checkpoint(run_dir, done, unwrap(), tokenizer, optimizer, scheduler,
                                totals={"tokens": tokens_seen, "skipped_nonfinite": skipped_steps})
                prune_checkpoints(run_dir, config.keep_checkpoints)
            accelerator.wait_for_everyone()
        bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['rewards/accuracies']:.2f}",
                        tok_s=f"{(tokens_seen - tokens_at_start) / (time.time() - started):.0f}")
        bar.update(1)
    bar.close()

    if start_step:  # resumed: the run's true starting point is the step-0 line of metrics.jsonl
        first_eval = log.first_record() or first_eval
    elapsed = time.time() - started
    return {"steps": steps, "resumed_from": start_step, "train_tokens": tokens_seen, "train_seconds": elapsed,
            "tokens_per_s": (tokens_seen - tokens_at_start) / max(elapsed, 1e-9), "skipped_nonfinite": skipped_steps,
            "eval_start": first_eval, "eval_end": last_eval, "policy": unwrap()}
