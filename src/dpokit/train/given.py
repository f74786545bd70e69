"""What the Python API hands a training run in place of paths: models, a tokenizer, rows in memory.

A run given rows writes them to OUTPUT/data/ first and reads them back through the same loaders as `--data`, so the
API and the command line take one path and the run's config.yaml names real files (`dpokit dpo --config
OUTPUT/config.yaml` repeats the run). Settings an in-memory model cannot honour are refused, never ignored.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..models import DTYPES, EMBEDDED_MODEL
from ..types import PreferencePair


@dataclasses.dataclass(frozen=True)
class Given:
    model: Any = None  # a transformers (or peft) causal LM to train, in place of --model
    reference: Any = None  # its reference, in place of --ref
    tokenizer: Any = None  # needed with `model`
    rows: Any = None  # training rows, in place of --data: PreferencePair objects, dicts or a datasets.Dataset
    eval_rows: Any = None  # held-out rows, in place of --eval-data


def check_given(config, given: Given) -> None:
    """Refuse a setting the given objects make impossible to honour, naming both."""
    def clash(field: str, why: str):
        raise UserError(f"config.{field}: {why}")

    if given.model is None:
        if given.reference is not None:
            clash("ref", "a reference model object needs a model object too (pass model=, or neither)")
        return
    if given.tokenizer is None:
        raise UserError("a model object needs its tokenizer: pass tokenizer=")
    if config.model != EMBEDDED_MODEL:
        clash("model", f"names {config.model!r} but a model object was given; pass one of the two")
    if given.reference is not None and config.ref:
        clash("ref", f"names {config.ref!r} but a reference object was given; pass one of the two")
    dtype = next(given.model.parameters()).dtype
    if config.dtype and DTYPES[config.dtype] != dtype:
        clash("dtype", f"{config.dtype} but the model object holds {dtype}; convert the model or drop dtype")
    for field, default, why in (("load_in_4bit", False, "quantises while loading from a folder"),
                                ("attention", "sdpa", "is chosen while loading from a folder"),
                                ("trust_remote_code", False, "applies to loading from a folder"),
                                ("allow_pickle", False, "applies to loading from a folder")):
        if getattr(config, field) != default and not (field in ("trust_remote_code", "allow_pickle") and config.ref):
            clash(field, f"{why}; with a model object it would be ignored: load the model that way yourself")
    if config.lora_r and hasattr(given.model, "peft_config"):
        clash("lora_r", "the model object already carries LoRA adapters; pass lora_r=0 to train them as they are")


def as_row(item: Any, where: str) -> dict:
    """A PreferencePair as the row it came from; a dict (or a datasets row) as it is."""
    if isinstance(item, PreferencePair):
        prompt = item.prompt if isinstance(item.prompt, str) else [dict(m) for m in item.prompt]
        if item.label is not None:  # a feedback example: the answer and its thumbs-up or -down
            return {"prompt": prompt, "completion": item.chosen, "label": item.label}
        row = {"prompt": prompt, "chosen": item.chosen, "rejected": item.rejected}
        return row if item.strength is None else {**row, "margin": item.strength}
    try:
        return dict(item)
    except (TypeError, ValueError):
        raise UserError(f"{where}: a row must be a PreferencePair or a mapping, not {type(item).__name__}") from None


def write_rows(path: Path, rows, name: str) -> None:
    """Rows → JSONL, whole or not at all."""
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        for i, item in enumerate(rows):
            try:
                f.write(json.dumps(as_row(item, f"{name}[{i}]"), ensure_ascii=False) + "\n")
            except TypeError as e:
                raise UserError(f"{name}[{i}]: cannot be written as JSON ({e})") from None
    tmp.replace(path)


def with_rows(config, given: Given, run_dir: Path, main: bool, accelerator):
    """The config reading the given rows from OUTPUT/data/ (written there by the main process)."""
    changes = {}
    for field, rows, name in (("data", given.rows, "train.jsonl"), ("eval_data", given.eval_rows, "eval.jsonl")):
        if rows is None:
            continue
        if isinstance(rows, (str, Path)):
            changes[field] = str(rows)
            continue
        path = run_dir / "data" / name
        if main:
            write_rows(path, rows, field.replace("data", "dataset"))
        changes[field] = str(path)
    accelerator.wait_for_everyone()
    return dataclasses.replace(config, **changes) if changes else config
