"""What every training command does before and after its loop: run folder, accelerator, dtype, memory figures."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import shutil
from pathlib import Path


from ..errors import UserError
from .checkpoint import latest_checkpoint


@dataclass
class TrainedRun:
    """What a training command leaves: its summary (summary.json's content; on other processes than the main one,
    the loop's totals) and the trained model."""

    summary: dict
    model: Any


def prepare_run_dir(config, modify: bool = True) -> Path:
    """Never overwrite a run unless asked: a non-empty folder needs --resume or --overwrite.

    Every process runs the checks (so all stop together on an error); only the one with `modify` deletes or creates.
    """
    run_dir = Path(config.output)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"output {config.output!r} is a file, not a folder")
    in_use = run_dir.exists() and any(run_dir.iterdir())
    if config.resume:
        if not in_use or latest_checkpoint(run_dir) is None:
            raise UserError(f"--resume: no checkpoint in {config.output!r} to resume from (save with --save-every N)")
    elif in_use:
        if not config.overwrite:
            raise UserError(f"output folder {config.output!r} is in use; pass --overwrite to replace it, "
                            "--resume to continue it, or choose another --output")
        if modify:
            shutil.rmtree(run_dir)
    if not modify:
        return run_dir
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create output folder {config.output!r}: {e.strerror}") from None
    return run_dir


def run_dtype(config) -> str:
    from .engine import run_dtype as engine_dtype

    from ..models import default_dtype

    return config.dtype or engine_dtype(config) or ("float32" if config.mixed_precision != "no" else default_dtype())


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def save_final(run_dir: Path, trained, tokenizer, config, state_dict: dict | None = None) -> str:
    """OUTPUT/final: the trained model or, with --early-stop, the best one by held-out loss (OUTPUT/best).

    `state_dict`: the gathered weights where `trained` holds only shards (ZeRO-3, FSDP)."""
    from .checkpoint import save_pretrained_atomic

    best = run_dir / "best"
    if getattr(config, "early_stop", False) and best.is_dir():
        tmp = run_dir / "final.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(best, tmp)
        shutil.rmtree(run_dir / "final", ignore_errors=True)
        tmp.rename(run_dir / "final")
        return "best"
    save_pretrained_atomic(trained, tokenizer, run_dir / "final", state_dict)
    return "last"


def finish_run(run_dir: Path, trained, tokenizer, config, summary: dict, accelerator, started: float,
               state_dict: dict | None = None) -> dict:
    """Save final/ (or the best model), write summary.json and the report; returns the summary with its paths."""
    import json
    import time

    from ..report import write_html
    from .engine import describe

    final_is = save_final(run_dir, trained, tokenizer, config, state_dict)
    summary = {**summary, "processes": accelerator.num_processes, "engine": describe(accelerator),
               "wall_seconds": time.time() - started,
               "peak_rss_mb": peak_rss_mb(), "output": str(run_dir / "final"), "final_is": final_is}
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    summary["report"] = str(write_html(run_dir))
    return summary


def summary_tail(s: dict) -> list[str]:
    """The closing lines every command prints: early stop, warnings, where the model and the report are."""
    lines = []
    if s.get("stopped_early_at"):
        lines.append(f"  early stop at step {s['stopped_early_at']}; final/ is the best model by held-out loss "
                     f"(step {s['best_step']})")
    elif s.get("final_is") == "best":
        lines.append(f"  final/ is the best model by held-out loss (step {s['best_step']})")
    lines += [f"  warning: {w}" for w in s.get("warnings", [])]
    lines.append(f"  model: {s['output']}")
    lines.append(f"  report: {s['report']}  (plots: report.png)")
    return lines


@contextmanager
def leave_nothing_on_error(config, run_dir: Path, existed: bool, main: bool):
    """A run that stops on a problem before writing anything (bad data, a file too small) leaves no empty run folder
    behind that it made itself; a folder that was there before is never touched."""
    try:
        yield
    except UserError:
        if main and not existed and run_dir.is_dir() and not any(run_dir.iterdir()):
            run_dir.rmdir()
        raise


def start_run(config, tokenizer=None):
    """What every training command does first: one Accelerator, the run folder (checked by every process, made by
    the main one), the dtype, and the model path and tokenizer (so data problems surface before weights load).

    `tokenizer`: the Python API's, given with a model object; then there is no model path (None)."""
    import time

    from ..allocator import set_cpu_malloc
    from ..models import load_tokenizer, resolve_model_path
    from .engine import check_config, make_accelerator

    started = time.time()
    check_config(config)
    set_cpu_malloc(config.cpu_malloc)  # before any large tensor is allocated
    accelerator = make_accelerator(config)
    run_dir = prepare_run_dir(config, modify=accelerator.is_main_process)
    accelerator.wait_for_everyone()
    if tokenizer is not None:
        if tokenizer.eos_token_id is None:
            raise UserError("the tokenizer given has no EOS token; set tokenizer.eos_token")
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token  # padding is masked out everywhere; any id will do
        return started, accelerator, run_dir, run_dtype(config), None, tokenizer
    model_path = resolve_model_path(config.model, allow_pickle=config.allow_pickle)
    tokenizer = load_tokenizer(model_path, trust_remote_code=config.trust_remote_code)
    return started, accelerator, run_dir, run_dtype(config), model_path, tokenizer
