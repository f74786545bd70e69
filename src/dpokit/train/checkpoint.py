"""Checkpoints: written to a temporary folder and renamed, so a kill never leaves a half checkpoint."""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch

CHECKPOINT_PREFIX = "checkpoint-"


def save_pretrained_atomic(model, tokenizer, target: Path, state_dict: dict | None = None) -> None:
    """`state_dict`: the gathered weights where the model's own are shards (ZeRO-3, FSDP)."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
    tokenizer.save_pretrained(tmp)
    if target.exists():
        old = target.with_name(target.name + ".old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old)
    else:
        tmp.rename(target)


def save_checkpoint(run_dir: Path, step: int, accelerator, module, model, tokenizer, optimizer, scheduler,
                    totals: dict) -> Path:
    """Every process calls this; the main one writes the files and renames the finished folder into place.

    Under DeepSpeed / FSDP each process also writes its shard of the weights and optimizer state with
    accelerator.save_state. `totals` (running counts such as tokens seen) travel with the checkpoint."""
    from . import engine

    main = accelerator.is_main_process
    target = run_dir / f"{CHECKPOINT_PREFIX}{step}"
    tmp = run_dir / f".{CHECKPOINT_PREFIX}{step}.tmp"
    if main:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    sharded = engine.is_sharded(accelerator)
    weights = engine.model_state_dict(accelerator, module)  # a collective under ZeRO-3 / FSDP
    if sharded:
        accelerator.save_state(str(tmp / engine.SHARDED_STATE))
    accelerator.wait_for_everyone()
    if main:
        model.save_pretrained(tmp, safe_serialization=True, state_dict=weights)
        tokenizer.save_pretrained(tmp)
        optimizer_state = None if sharded else optimizer.state_dict()
        torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict()}, tmp / "trainer_state.pt")
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        rng = {"python": random.getstate(),
               "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
               "torch": torch.get_rng_state()}
        torch.save(rng, tmp / "rng_state.pt")
        (tmp / "step.json").write_text(json.dumps({"step": step, **totals}), encoding="utf-8")  # written last
        shutil.rmtree(target, ignore_errors=True)  # only a re-save of the same step (after a resume) finds one
        tmp.rename(target)
    return target


def checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a folder without step.json was never finished)."""
    found = [p for p in run_dir.glob(f"{CHECKPOINT_PREFIX}*") if (p / "step.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(CHECKPOINT_PREFIX):]))


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for old in checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    found = checkpoints(run_dir)
    return found[-1] if found else None


def load_checkpoint(path: Path, model, optimizer, scheduler, accelerator) -> dict:
    """Restore weights, optimizer, scheduler and RNG; return step.json: the step and the running totals."""
    from ..errors import UserError
    from . import engine

    sharded_dir = path / engine.SHARDED_STATE
    if sharded_dir.is_dir() != engine.is_sharded(accelerator):
        written = "under DeepSpeed or FSDP" if sharded_dir.is_dir() else "without DeepSpeed or FSDP"
        raise UserError(f"checkpoint {path} was written {written}; resume it under the same kind of launch")
    if sharded_dir.is_dir():
        accelerator.load_state(str(sharded_dir))  # every process its own shard of weights and optimizer state
    else:
        load_weights(path, model)
    state = torch.load(path / "trainer_state.pt", weights_only=True)
    if state["optimizer"] is not None:
        optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rng = torch.load(path / "rng_state.pt", weights_only=True)
    random.setstate(rng["python"])
    kind, keys, pos, has_gauss, gauss = rng["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(rng["torch"])
    return json.loads((path / "step.json").read_text())


def load_weights(path: Path, model) -> None:
    from safetensors.torch import load_file

    weights = {}
    for shard in sorted(path.glob("*.safetensors")):
        weights.update(load_file(shard))
    if hasattr(model, "peft_config"):  # a LoRA checkpoint holds the adapter weights only
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, weights)
        missing, unexpected = [], list(result.unexpected_keys)
    else:
        missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {name for name in missing if "lm_head" in name}  # tied to the embeddings, saved once
    if unexpected or set(missing) - tied:
        raise RuntimeError(f"checkpoint {path} does not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})")
