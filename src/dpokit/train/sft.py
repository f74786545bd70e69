"""`dpokit sft` and `dpokit coh` as a story: data → model → the one loop with the SFT objective → save → summarise.

Chain of Hindsight is SFT on feedback-conditioned sequences built from preference pairs (data/sft.py); only the
data differs, and the run's final/ folder records the feedback phrases for `dpokit generate --coh`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ..config import CoHConfig, SFTConfig, dump_config
from ..data.prepare import prepare_sft_data
from ..models import load_policy
from .loop import train_loop
from .objectives import Objective, SFTObjective
from .source import ShuffledSource
from .setup import TrainedRun, finish_run, leave_nothing_on_error, start_run, summary_tail

from ..generate import COH_FILE  # the feedback phrases of a CoH model, read by `generate --coh`


def run_sft(config: SFTConfig, *, quiet: bool = False, objective: Objective | None = None,
            callbacks: Sequence = ()) -> TrainedRun:
    """`dpokit sft` and `dpokit coh`. `objective`: another objective for the same data (default: the per-token NLL
    of SFTObjective)."""
    existed = Path(config.output).exists()
    started, accelerator, run_dir, dtype, model_path, tokenizer = start_run(config)
    main = accelerator.is_main_process
    with leave_nothing_on_error(config, run_dir, existed, main):
        train, held_out, data_summary = prepare_sft_data(config, tokenizer, coh=isinstance(config, CoHConfig))
    model = load_policy(model_path, config, dtype)
    if main:
        dump_config(config, run_dir / "config.yaml")

    objective = objective or SFTObjective(config)
    source = ShuffledSource.for_run(train, config, objective.length)
    result = train_loop(model, objective, tokenizer, source, held_out, config, run_dir, accelerator, callbacks)
    if not main:
        return TrainedRun(result.totals(), result.model)
    command = "coh" if isinstance(config, CoHConfig) else "sft"
    summary = finish_run(run_dir, result.model, tokenizer, config, {"command": command, **data_summary,
                                                                     **result.totals(), "dtype": dtype},
                         accelerator, started, result.state_dict)
    if isinstance(config, CoHConfig):
        phrases = {"positive": config.positive, "negative": config.negative}
        (run_dir / "final" / COH_FILE).write_text(json.dumps(phrases), encoding="utf-8")
    if not quiet:
        print(format_sft_summary(summary))
    return TrainedRun(summary, result.model)


def format_sft_summary(s: dict) -> str:
    lines = [f"dpokit {s['command']}: {s['steps']} steps on {s['examples']['train']} examples in "
             f"{s['wall_seconds']:.0f} s ({s['tokens_per_s']:.0f} tokens/s training, peak RSS {s['peak_rss_mb']:.0f} MB)"]
    start, end = s.get("eval_start") or {}, s.get("eval_end") or {}
    if end:
        lines.append(f"  held-out loss (NLL per answer token, {s['examples']['eval']} examples): "
                     f"{start.get('eval/loss', float('nan')):.4f} → {end['eval/loss']:.4f}")
    lines += summary_tail(s)
    return "\n".join(lines)
