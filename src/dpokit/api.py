"""Python API mirroring the CLI, for people coming from TRL:

    from dpokit import DPOConfig, load_preference_pairs, train
    pairs = load_preference_pairs("pairs.jsonl")
    result = train(model, reference, DPOConfig(beta=0.1, max_steps=100, output="runs/x"), pairs, tokenizer)
    result["eval_end"]["eval/rewards/accuracies"]
"""
from __future__ import annotations

from pathlib import Path

from .config import DPOConfig
from .data.prepare import reading, resolve_data_path, split_pairs, tokenize_splits
from .data.validate import load_pairs, row_pairs
from .models import frozen_copy
from .reference import LiveReference
from .train.checkpoint import save_pretrained_atomic
from .train.dpo import check_strengths
from .train.setup import prepare_run_dir
from .train.loop import train_dpo
from .types import PreferencePair


def load_preference_pairs(path: str, *, skip_invalid: bool = False, columns: str | None = None,
                          pairs: str = "best-vs-worst") -> list[PreferencePair]:
    """Any file or folder `dpokit dpo --data` accepts → validated canonical pairs; ``columns`` and ``pairs`` as the
    flags --columns and --pairs."""
    read = reading(DPOConfig(columns=columns, pairs=pairs))
    return load_pairs(resolve_data_path(path), skip_invalid=skip_invalid, **read).pairs


def _as_pairs(rows, name: str, config: DPOConfig) -> list[PreferencePair]:
    if isinstance(rows, (str, Path)):
        return load_preference_pairs(str(rows), columns=config.columns, pairs=config.pairs)
    read = reading(config)
    pairs = []
    for i, row in enumerate(rows):  # PreferencePair, or a dict in any accepted row shape (a datasets.Dataset too)
        if isinstance(row, PreferencePair):
            pairs.append(row)
        else:
            origin = f"{name}[{i}]"
            value = dict(row) if read["columns"] is None else read["columns"].map_row(dict(row), origin)
            pairs += row_pairs(value, origin, read["pairs"])[1]
    return pairs


def train(model, reference, config: DPOConfig, dataset, tokenizer, eval_dataset=None, *, save: bool = True) -> dict:
    """Train `model` with `config` against `reference` (None: a frozen copy of `model`).

    `dataset` / `eval_dataset`: a path, a list of PreferencePair, or rows (dicts, a datasets.Dataset) in any shape the
    CLI accepts. Returns the run summary (eval metrics at start and end, steps, tokens/s) plus the trained model.
    """
    run_dir = prepare_run_dir(config)
    train_pairs = _as_pairs(dataset, "dataset", config)
    eval_pairs = None if eval_dataset is None else _as_pairs(eval_dataset, "eval_dataset", config)
    train_pairs, eval_pairs = split_pairs(config, train_pairs, eval_pairs)
    data = tokenize_splits(config, tokenizer, train_pairs, eval_pairs)
    check_strengths(config, data.train + data.eval)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    reference = frozen_copy(model) if reference is None else reference.eval().requires_grad_(False)
    model.train()
    result = train_dpo(model, LiveReference(reference, lean=not config.full_logits), tokenizer, data.train, data.eval,
                       config, run_dir)  # train_dpo makes its own Accelerator: one process
    if save:
        save_pretrained_atomic(result["policy"], tokenizer, run_dir / "final")
    result.pop("policy_state")  # one process: the model holds its own weights
    return {**data.summary, **result, "model": result.pop("policy")}
