"""The one training loop, top to bottom: schedule → eval/checkpoint → micro-steps → clip → step → log.

DPO, SFT and Chain of Hindsight differ only in the objective handed to `train_loop` (train/objectives.py).
"""
from __future__ import annotations

import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..errors import NonFiniteError, UserError
from ..types import TokenizedPair
from . import engine
from .checkpoint import latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint, save_pretrained_atomic
from ..eval.intervals import with_intervals
from .metrics import MetricsLog, MetricSums
from .objectives import DPOObjective
from .setup import peak_rss_mb
from .watch import OverfitWatch


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
    return [DPOObjective.length(p) for p in pairs]


def pairs_reached(config, train_pairs: list[TokenizedPair]) -> list[int]:
    """Every training pair index some step of this run will use (the reference cache fills only these)."""
    n = len(train_pairs)
    lengths = pair_lengths(train_pairs) if config.group_by_length else None
    stream = total_steps(config, n) * config.batch_size  # positions in the flat stream of epoch orders
    if stream >= n:
        return list(range(n))  # a whole epoch reaches every pair
    return sorted(epoch_order(n, 0, config.seed, config.batch_size, lengths)[:stream])


@torch.no_grad()
def evaluate(module, objective, batches: list, accelerator) -> dict[str, float]:
    """Mean metrics over this run's held-out batches (`batches`: (batch, indices) pairs), gathered over ranks."""
    was_training = module.training
    module.eval()
    sums, margins = MetricSums(), []
    for batch, indices in batches:
        _, metrics = objective(module, batch, "eval", indices)
        sums.add(metrics)
        if "rewards/margins" in metrics:  # per pair, for the interval of the mean
            margins += metrics["rewards/margins"].float().cpu().tolist()
    module.train(was_training)
    means = sums.reduce(accelerator, objective.metric_keys).means(prefix="eval/")
    if "eval/rewards/margins" in means:
        if accelerator.num_processes > 1:
            from accelerate.utils import gather_object

            margins = gather_object(margins)
        means.update(with_intervals(means["eval/rewards/accuracies"], margins))
    return {**means, **objective.finish(means)}


def nonfinite_message(step: int, origins: list[str], run_dir: Path) -> str:
    last = latest_checkpoint(run_dir)
    kept = f"last good checkpoint: {last}" if last else "no checkpoint was written yet"
    shown = ", ".join(origins[:8]) + (f" and {len(origins) - 8} more" if len(origins) > 8 else "")
    return (f"non-finite loss or gradient at step {step} (pairs {shown}); {kept}. Lower --learning-rate, check "
            "those pairs, or pass --skip-nonfinite to skip such steps")


def accumulate_gradients(module, objective, micro_batches: list[tuple], accelerator):
    """Forward and backward over one step's micro-batches; returns metrics, tokens and whether the loss was finite.

    accelerate divides each loss by the number of micro-batches (DeepSpeed by its own count, set equal in
    engine.configure), skips DDP's gradient all-reduce until the last one, and there DeepSpeed takes its step."""
    sums, tokens, finite = MetricSums(), 0, True
    for batch, indices in micro_batches:
        batch = batch.to(accelerator.device)
        with accelerator.accumulate(module):
            loss, metrics = objective(module, batch, "train", indices)
            finite = finite and bool(torch.isfinite(loss))
            accelerator.backward(loss)
        sums.add(metrics)
        tokens += batch.num_tokens
    if not accelerator.sync_gradients:  # accelerate counts micro-batches itself; it must agree that the step ends here
        raise RuntimeError(f"accelerate's accumulation count is out of step with {len(micro_batches)} micro-batches")
    totals = accelerator.reduce(torch.tensor([tokens, int(not finite)], device=accelerator.device), "sum")
    # every rank takes the same decision
    return sums.reduce(accelerator, objective.metric_keys), int(totals[0]), int(totals[1]) == 0


def restore(run_dir: Path, config, model, optimizer, scheduler, accelerator) -> dict:
    """With --resume: load the newest checkpoint; returns the step and running totals to continue from."""
    resumed = {"step": 0, "tokens": 0, "skipped_nonfinite": 0, "best_eval_loss": None, "best_step": None}
    checkpoint = latest_checkpoint(run_dir) if config.resume else None
    if checkpoint is not None:
        resumed.update(load_checkpoint(checkpoint, model, optimizer, scheduler, accelerator))
    return resumed


def prepare_eval(eval_examples, collate, pad_id: int, micro_size: int, accelerator) -> list[tuple]:
    """This rank's held-out batches with their example indices: built once per run."""
    mine = list(range(accelerator.process_index, len(eval_examples), accelerator.num_processes))
    chunks = [mine[i:i + micro_size] for i in range(0, len(mine), micro_size)]
    return [(collate([eval_examples[i] for i in idx], pad_id).to(accelerator.device), idx) for idx in chunks]


def update(optimizer, scheduler, finite: bool, config, nonfinite_message) -> bool:
    """The optimizer step (if loss and gradients were finite), the schedule step, and zeroed gradients.

    Returns whether the weights were updated; a non-finite step stops the run unless --skip-nonfinite."""
    if finite:
        optimizer.step()
    elif not config.skip_nonfinite:
        raise NonFiniteError(nonfinite_message())
    scheduler.step()  # a skipped step moves the schedule and the data order on as if it had happened
    optimizer.zero_grad(set_to_none=True)
    return finite


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
    return train_loop(policy, DPOObjective(reference, config), tokenizer, train_pairs, eval_pairs, config, run_dir,
                      accelerator)


def train_loop(model, objective, tokenizer, train_examples: list, eval_examples: list, config, run_dir: Path,
               accelerator=None) -> dict:
    """Train `model` on `objective` (DPOObjective, SFTObjective); returns eval metrics at start and end, and totals."""
    accelerator = accelerator or engine.make_accelerator(config)
    torch.manual_seed(config.seed)
    pad_id = tokenizer.pad_token_id
    lengths = [objective.length(e) for e in train_examples] if config.group_by_length else None
    micro_size = config.batch_size // config.grad_accum
    rank, world = accelerator.process_index, accelerator.num_processes
    if micro_size % world:
        raise UserError(f"batch_size: {config.batch_size} examples in {config.grad_accum} micro-batches do not split "
                        f"evenly over {world} processes; make batch-size a multiple of grad-accum × {world}")
    steps = total_steps(config, len(train_examples))
    main = accelerator.is_main_process

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=config.learning_rate,
                                  weight_decay=config.weight_decay)
    scheduler = make_scheduler(optimizer, config, steps)
    engine.configure(accelerator, config, micro_size // world)
    module, optimizer = accelerator.prepare(objective.wrap(model), optimizer)
    engine.after_prepare(accelerator, module)
    unwrap = lambda: accelerator.unwrap_model(module).model  # noqa: E731  the plain HF (or peft) model
    reference_model = getattr(getattr(objective, "reference", None), "model", None)
    if reference_model is not None and reference_model is not model:
        reference_model.to(accelerator.device)

    resumed = restore(run_dir, config, unwrap(), optimizer, scheduler, accelerator)
    start_step = resumed["step"]
    log = MetricsLog(run_dir / "metrics.jsonl", resume_step=start_step if config.resume else None, writer=main)

    watch = OverfitWatch.for_run(config, resumed, total_steps=steps)

    def after_eval(step: int, metrics: dict) -> list[str]:
        """Warnings to show; with --early-stop the best model so far goes to OUTPUT/best."""
        improved, warnings = watch.add_eval(step, metrics)
        for warning in warnings:
            tqdm.write(f"dpokit: warning: {warning}")
        if config.early_stop and improved:
            weights = engine.model_state_dict(accelerator, module)  # every process: a gather under ZeRO-3 / FSDP
            if main:
                save_pretrained_atomic(unwrap(), tokenizer, run_dir / "best", weights)
        return warnings

    eval_batches = prepare_eval(eval_examples, objective.collate, pad_id, micro_size // world, accelerator)
    first_eval = evaluate(module, objective, eval_batches, accelerator) if eval_examples and not start_step else {}
    if first_eval:
        log.write({"step": 0, **first_eval})
        after_eval(0, first_eval)
    last_eval = first_eval
    stopped_early = None

    tokens_seen, skipped_steps = resumed["tokens"], resumed["skipped_nonfinite"]  # running totals continue
    started, tokens_at_start = time.time(), tokens_seen
    bar = tqdm(total=steps, initial=start_step, desc=objective.name, unit="step", dynamic_ncols=True, disable=not main)
    for step in range(start_step, steps):
        step_started = time.time()
        indices = pair_order(len(train_examples), step, config.batch_size, config.seed, lengths)
        # Each process takes its share of every micro-batch; DDP averages the gradients of the shares.
        micro_indices = [indices[m * micro_size:(m + 1) * micro_size][rank::world] for m in range(config.grad_accum)]
        micro_batches = [(objective.collate([train_examples[i] for i in idx], pad_id), idx) for idx in micro_indices]
        objective.begin_step([train_examples[i] for i in indices], shares=config.grad_accum * world)
        sums, step_tokens, finite = accumulate_gradients(module, objective, micro_batches, accelerator)
        # Under DeepSpeed the engine has clipped and stepped inside the last backward; this reads its norm.
        grad_norm = accelerator.clip_grad_norm_(module.parameters(), config.max_grad_norm or float("inf"))
        grad_norm = float("nan") if grad_norm is None else float(grad_norm)
        done = step + 1
        if not update(optimizer, scheduler, finite and math.isfinite(grad_norm), config,
                      lambda: nonfinite_message(done, [train_examples[i].origin for i in indices], run_dir)):
            skipped_steps += 1

        tokens_seen += step_tokens
        means = sums.means()
        record = {"step": done, "epoch": done * config.batch_size / len(train_examples), **means,
                  **objective.finish(means), "skipped_nonfinite": skipped_steps,
                  "grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0], "tokens": tokens_seen,
                  "tokens_per_s": step_tokens / max(time.time() - step_started, 1e-9)}
        watch.add_train(record)
        if eval_examples and (done == steps or config.eval_every and done % config.eval_every == 0):
            last_eval = evaluate(module, objective, eval_batches, accelerator)
            record.update(last_eval)
            warnings = after_eval(done, last_eval)
            if warnings:
                record["warnings"] = warnings
            if config.early_stop and watch.should_stop() and done != steps:
                stopped_early = done
        if done % config.log_every == 0 or done == steps or stopped_early:
            log.write(record)
        if config.save_every and done % config.save_every == 0 and done != steps:
            save_checkpoint(run_dir, done, accelerator, module, unwrap(), tokenizer, optimizer, scheduler,
                            totals={"tokens": tokens_seen, "skipped_nonfinite": skipped_steps, **watch.totals()})
            if main:
                prune_checkpoints(run_dir, config.keep_checkpoints)
            accelerator.wait_for_everyone()
        shown = {"acc": f"{record[objective.progress_key]:.2f}"} if objective.progress_key else {}
        bar.set_postfix(loss=f"{record['loss']:.4f}", **shown,
                        tok_s=f"{(tokens_seen - tokens_at_start) / (time.time() - started):.0f}")
        bar.update(1)
        if stopped_early:
            tqdm.write(f"dpokit: early stop at step {done}: held-out loss has not improved for {config.patience} "
                       f"evaluations; best {watch.best_loss:.4f} at step {watch.best_step}")
            break
    bar.close()

    policy_state = engine.model_state_dict(accelerator, module)  # gathered weights under ZeRO-3 / FSDP
    peaks = accelerator.gather(torch.tensor([peak_rss_mb()], device=accelerator.device)).tolist()  # every process's
    if start_step:  # resumed: the run's true starting point is the step-0 line of metrics.jsonl
        first_eval = log.first_record() or first_eval
    elapsed = time.time() - started
    return {"steps": stopped_early or steps, "resumed_from": start_step, "train_tokens": tokens_seen, "train_seconds": elapsed,
            "tokens_per_s": (tokens_seen - tokens_at_start) / max(elapsed, 1e-9), "skipped_nonfinite": skipped_steps,
            "eval_start": first_eval, "eval_end": last_eval, "warnings": watch.warnings,
            "best_step": watch.best_step, "stopped_early_at": stopped_early, "policy": unwrap(),
            "policy_state": policy_state, "peak_rss_mb_per_process": peaks}
