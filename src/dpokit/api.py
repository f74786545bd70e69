"""The Python API: the same run as `dpokit dpo`, with models, tokenizer and rows handed in as objects.

    from dpokit import DPOConfig, load_preference_pairs, train
    pairs = load_preference_pairs("pairs.jsonl")
    run = train(model, None, DPOConfig(beta=0.1, max_steps=100, output="runs/x"), pairs, tokenizer)
    run.summary["eval_end"]["eval/rewards/accuracies"], run.model

Everything `dpokit dpo` does happens here too (data checks, the reference cache, the memory check, checkpoints,
--resume, config.yaml, summary.json, the report), because both call train.dpo.run_dpo; a config field a model object
cannot honour is refused.
"""
from __future__ import annotations

from typing import Sequence

from .config import DPOConfig
from .data.prepare import reading, resolve_data_path
from .data.validate import load_pairs
from .train.dpo import run_dpo
from .train.given import Given
from .train.setup import TrainedRun
from .types import PreferencePair


def load_preference_pairs(path: str, *, skip_invalid: bool = False, columns: str | None = None,
                          pairs: str = "best-vs-worst") -> list[PreferencePair]:
    """Any file or folder `dpokit dpo --data` accepts → validated canonical pairs; ``columns`` and ``pairs`` as the
    flags --columns and --pairs."""
    read = reading(DPOConfig(columns=columns, pairs=pairs))
    return load_pairs(resolve_data_path(path), skip_invalid=skip_invalid, **read).pairs


def train(model, reference, config: DPOConfig, dataset=None, tokenizer=None, eval_dataset=None, *,
          callbacks: Sequence = (), quiet: bool = True) -> TrainedRun:
    """Train with `config`, as `dpokit dpo` would.

    `model`: a causal LM object, or None to load `config.model`. `reference`: a model object, or None for
    `config.ref` (default: the model before training; with LoRA, the model with its adapters off).
    `dataset` / `eval_dataset`: a path, a list of PreferencePair, or rows (dicts, a datasets.Dataset) in any shape the
    CLI accepts (read with config.columns and config.pairs); None: `config.data` / `config.eval_data`.
    `tokenizer`: needed with a model object. `callbacks`: objects with on_step(record) and/or on_eval(step, metrics).
    Returns the run's summary (as in OUTPUT/summary.json) and the trained model."""
    given = Given(model=model, reference=reference, tokenizer=tokenizer, rows=dataset, eval_rows=eval_dataset)
    return run_dpo(config, quiet=quiet, given=given, callbacks=callbacks)
