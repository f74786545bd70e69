"""`dpokit export`: a run or model folder → a self-contained folder others can load with transformers (or peft).

- LoRA adapter + `--merge`: base + adapter merged into one full model (safetensors, config, generation config,
  tokenizer with its chat template).
- LoRA adapter, no `--merge`: the adapter alone (adapter_model.safetensors, adapter_config.json with an absolute
  `base_model_name_or_path`, tokenizer).
- Full model: re-saved as safetensors with its tokenizer (`--merge` changes nothing).

`dpokit_coh.json` (Chain of Hindsight phrases) travels along. The folder is written to OUT.tmp and renamed, so an
interrupted export leaves no half folder at OUT.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .errors import UserError
from .generate import (ADAPTER_CONFIG, COH_FILE, adapter_base, has_tokenizer, is_adapter, load_for_generation,
                       model_folder)
from .models import load_tokenizer

ADAPTER_WEIGHTS = "adapter_model.safetensors"


def _check_target(source: Path, out: Path, overwrite: bool) -> None:
    if out.resolve() == source.resolve():
        raise UserError(f"--out {out} is the folder being exported; choose another folder")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not overwrite:
        raise UserError(f"{out} already exists and is not empty; choose another --out or pass --overwrite")


def _publish(tmp: Path, out: Path) -> None:
    """Replace `out` by the finished `tmp` folder."""
    if out.exists():
        old = out.with_name(out.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        if out.is_dir():
            out.rename(old)
        else:
            out.unlink()
        tmp.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        tmp.rename(out)


def _export_adapter_only(source: Path, tmp: Path) -> None:
    if not (source / ADAPTER_WEIGHTS).is_file():
        raise UserError(f"{source} has no {ADAPTER_WEIGHTS}; only safetensors adapters are exported")
    base = adapter_base(source)
    config = json.loads((source / ADAPTER_CONFIG).read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = str(base.resolve())
    shutil.copy2(source / ADAPTER_WEIGHTS, tmp / ADAPTER_WEIGHTS)
    (tmp / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
    load_tokenizer(source if has_tokenizer(source) else base).save_pretrained(tmp)


def export(source: str | Path, out: str | Path, *, merge: bool = False, overwrite: bool = False) -> Path:
    """Write the export of `source` (run folder, model folder or adapter folder) to `out`; return `out`."""
    source, out = model_folder(source), Path(out)
    if not source.exists():
        raise UserError(f"{source} does not exist; give a run folder (its final/ is exported) or a model folder")
    _check_target(source, out, overwrite)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        if is_adapter(source) and not merge:
            _export_adapter_only(source, tmp)
        else:
            model, tokenizer = load_for_generation(source, device="cpu")  # the weights are only copied
            if is_adapter(source):
                model = model.merge_and_unload()  # W + (alpha / r) · B A, adapters gone
            model.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        if source.is_dir() and (source / COH_FILE).is_file():
            shutil.copy2(source / COH_FILE, tmp / COH_FILE)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _publish(tmp, out)
    return out


def describe(out: Path) -> str:
    kind = "LoRA adapter" if (out / ADAPTER_CONFIG).is_file() else "full model"
    return f"dpokit: exported a {kind} to {out}"
