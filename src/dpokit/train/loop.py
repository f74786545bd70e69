"""The one training loop, top to bottom: schedule → eval/checkpoint → micro-steps → clip → step → log.

What it optimises is the objective handed to it (train/objectives.py: DPO and its family, SFT, Chain of Hindsight);
what it trains on is the data source handed to it (train/source.py); what it did comes back as a RunResult, and
callbacks see every logged step and evaluation as it happens.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol, Sequence

import torch
from tqdm.auto import tqdm

from ..errors import NonFiniteError, UserError
from . import engine
from .checkpoint import latest_checkpoint, load_checkpoint, prune_checkpoints, save_checkpoint, save_pretrained_atomic
from ..eval.intervals import with_intervals
from .metrics import MetricsLog, MetricSums
from .objectives import Objective
from .setup import peak_rss_mb
from .source import DataSource
from .watch import OverfitWatch


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


@dataclass
class RunResult:
    """What one call of the loop did. `model` is the trained (unwrapped HF or peft) model; `state_dict` its gathered
    weights where the model holds only shards (ZeRO-3, FSDP); the rest is what summary.json records."""

    model: Any
    state_dict: dict | None
    steps: int
    resumed_from: int
    train_tokens: int
    train_seconds: float
    tokens_per_s: float
    skipped_nonfinite: int
    eval_start: dict
    eval_end: dict
    warnings: list[str]
    best_step: int | None
    stopped_early_at: int | None
    peak_rss_mb_per_process: list[float]

    def totals(self) -> dict:
        """Every field but the model and its weights: plain values, ready for summary.json."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("model", "state_dict")}


class Callback(Protocol):
    """What a caller may watch while the loop runs (every method optional; a callback implements those it needs).

    on_step(record): the metrics line of each optimizer step, on the main process, whether or not it is logged.
    on_eval(step, metrics): each held-out evaluation (step 0 is the one before training)."""


def notify(callbacks: Sequence[Callback], event: str, *args) -> None:
    for callback in callbacks:
        method = getattr(callback, event, None)
        if method is not None:
            method(*args)


def train_loop(model, objective: Objective, tokenizer, source: DataSource, eval_examples: list, config, run_dir: Path,
               accelerator=None, callbacks: Sequence[Callback] = (), probe=None) -> RunResult:
    """Train `model` on `objective`, drawing each step's examples from `source`; evaluate on `eval_examples` and, with
    a `probe` (one process only: train/probe.py), on its greedy answers."""
    accelerator = accelerator or engine.make_accelerator(config)
    torch.manual_seed(config.seed)
    pad_id = tokenizer.pad_token_id
    train_examples = source.examples
    micro_size = config.batch_size // config.grad_accum
    rank, world = accelerator.process_index, accelerator.num_processes
    if micro_size % world:
        raise UserError(f"batch_size: {config.batch_size} examples in {config.grad_accum} micro-batches do not split "
                        f"evenly over {world} processes; make batch-size a multiple of grad-accum × {world}")
    steps = total_steps(config, len(train_examples))
    main = accelerator.is_main_process

    trainable = [p for p in model.parameters() if p.requires_grad]
    if not trainable:
        raise UserError("the model has no trainable parameters (every one has requires_grad False); a model object "
                        "given to dpokit.train must be trainable: call model.requires_grad_(True) first")
    optimizer = torch.optim.AdamW(trainable, lr=config.learning_rate, weight_decay=config.weight_decay)
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
    if start_step:  # resumed: the step-0 evaluation is every check's baseline
        accelerator.wait_for_everyone()  # the main process has finished cutting metrics.jsonl back to the checkpoint
        first = log.first_record()
        if first:
            watch.records.append(first)

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
    def held_out(step: int) -> dict:
        metrics = evaluate(module, objective, eval_batches, accelerator)
        if probe is not None:
            metrics.update({f"eval/{k}": v for k, v in probe(unwrap(), step).items()})
        return metrics

    first_eval = held_out(0) if eval_examples and not start_step else {}
    if first_eval:
        log.write({"step": 0, **first_eval})
        after_eval(0, first_eval)
        if main:
            notify(callbacks, "on_eval", 0, first_eval)
    last_eval = first_eval
    stopped_early = None

    tokens_seen, skipped_steps = resumed["tokens"], resumed["skipped_nonfinite"]  # running totals continue
    started, tokens_at_start = time.time(), tokens_seen
    bar = tqdm(total=steps, initial=start_step, desc=objective.name, unit="step", dynamic_ncols=True, disable=not main)
    for step in range(start_step, steps):
        step_started = time.time()
        indices = source.indices(step)
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
            last_eval = held_out(done)
            record.update(last_eval)
            warnings = after_eval(done, last_eval)
            if warnings:
                record["warnings"] = warnings
            if main:
                notify(callbacks, "on_eval", done, last_eval)
            if config.early_stop and watch.should_stop() and done != steps:
                stopped_early = done
        if done % config.log_every == 0 or done == steps or stopped_early:
            log.write(record)
        if main:
            notify(callbacks, "on_step", record)
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
    return RunResult(model=unwrap(), state_dict=policy_state, steps=stopped_early or steps, resumed_from=start_step,
                     train_tokens=tokens_seen, train_seconds=elapsed,
                     tokens_per_s=(tokens_seen - tokens_at_start) / max(elapsed, 1e-9), skipped_nonfinite=skipped_steps,
                     eval_start=first_eval, eval_end=last_eval, warnings=watch.warnings, best_step=watch.best_step,
                     stopped_early_at=stopped_early, peak_rss_mb_per_process=peaks)
