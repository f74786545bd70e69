"""Where reference log-probs come from: the frozen model, live, or a cache computed once on disk.

The cache key is cheap and safe: sha256 digests of the reference's config and safetensors files (each file's
digest remembered by path, size and mtime, so a 15 GB model is hashed once, not every run), the dtype, and the
token ids of every pair. A cache whose recorded key does not match is refused, never silently used.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .errors import UserError
from .logprobs import batch_logps
from .losses import PairLogps
from .models import cache_dir, file_digest
from .types import TokenizedPair


class LiveReference:
    """Runs the frozen reference model on each batch."""

    def __init__(self, model, lean: bool = True):
        self.model, self.lean = model, lean

    @torch.no_grad()
    def logps(self, batch, split: str, indices: list[int], policy_module=None) -> PairLogps:
        return batch_logps(self.model, batch, lean=self.lean)


class AdaptersOffReference:
    """The LoRA policy with its adapters switched off: the base model as reference, without a second copy."""

    def __init__(self, peft_model, lean: bool = True):
        self.peft_model, self.lean = peft_model, lean

    @torch.no_grad()
    def logps(self, batch, split: str, indices: list[int], policy_module=None) -> PairLogps:
        """`policy_module`: the prepared PairLogpsModule around this model. Going through it lets the engine
        (ZeRO-3, FSDP) gather the sharded weights the base model needs; without it the model runs directly."""
        was_training = self.peft_model.training
        self.peft_model.eval()
        with self.peft_model.disable_adapter():
            if policy_module is not None:
                out = PairLogps(*policy_module(batch))
            else:
                out = batch_logps(self.peft_model, batch, lean=self.lean)
        self.peft_model.train(was_training)
        return out


@dataclass
class CachedReference:
    """Reference log-probs of every pair, looked up by split and pair index; no model in memory."""

    tables: dict[str, torch.Tensor]  # "train" / "eval" → (N, 2) float32: chosen, rejected
    path: Path | None = None

    def logps(self, batch, split: str, indices: list[int], policy_module=None) -> PairLogps:
        rows = self.tables[split][torch.tensor(indices, dtype=torch.long)].to(batch.input_ids.device)
        if torch.isnan(rows).any():
            raise RuntimeError(f"reference cache {self.path}: {split} pairs {indices} were never computed")
        counts = torch.bincount(batch.owners, minlength=2 * batch.num_pairs)
        return PairLogps(rows[:, 0], rows[:, 1], counts[:batch.num_pairs], counts[batch.num_pairs:])


def model_fingerprint(model_dir: Path) -> str:
    """Digest of a model folder's weights and config; a LoRA adapter folder adds its adapter to its base's."""
    from .models import adapter_base, is_adapter_dir

    memo_path = cache_dir() / "file-digests.json"
    memo = json.loads(memo_path.read_text()) if memo_path.is_file() else {}
    h = hashlib.sha256()
    if is_adapter_dir(model_dir):
        h.update(model_fingerprint(adapter_base(model_dir)).encode())
        files = sorted(model_dir.glob("adapter_model*.safetensors")) + [model_dir / "adapter_config.json"]
    else:
        files = sorted(model_dir.glob("*.safetensors")) + [model_dir / "config.json"]
    for f in files:
        h.update(f.name.encode() + file_digest(f, memo).encode())
    memo_path.parent.mkdir(parents=True, exist_ok=True)
    memo_path.write_text(json.dumps(memo))
    return h.hexdigest()


@torch.no_grad()
def weights_fingerprint(model) -> str:
    """Digest of an in-memory model's weights and config (the Python API's model objects have no folder)."""
    h = hashlib.sha256(model.config.to_json_string().encode())
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode() + str(tensor.dtype).encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def data_fingerprint(splits: dict[str, list[TokenizedPair]]) -> str:
    h = hashlib.sha256()
    for name in sorted(splits):
        h.update(name.encode())
        for p in splits[name]:
            h.update(json.dumps([p.prompt_ids, p.chosen_ids, p.rejected_ids]).encode())
    return h.hexdigest()


def cache_key(model_fp: str, dtype: str, data_fp: str) -> str:
    return hashlib.sha256(f"{model_fp}|{dtype}|{data_fp}".encode()).hexdigest()[:24]


def load_cache(path: Path, key: str, splits: dict[str, list[TokenizedPair]]) -> CachedReference:
    """The cached tables for these splits; rows not computed yet are NaN."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
        if meta.get("key") != key:
            raise UserError(f"reference cache {path} was made for other weights or data (key {meta.get('key')!r}, "
                            f"expected {key!r}); delete it or pass --reference-cache off")
        tables = {name: f.get_tensor(name) for name in splits}
    for name, pairs in splits.items():
        if tables[name].shape != (len(pairs), 2):
            raise UserError(f"reference cache {path} holds {tuple(tables[name].shape)} for {name}, "
                            f"expected ({len(pairs)}, 2); delete it")
    return CachedReference(tables, path)


def empty_tables(splits: dict[str, list[TokenizedPair]]) -> dict[str, torch.Tensor]:
    return {name: torch.full((len(pairs), 2), float("nan")) for name, pairs in splits.items()}


def missing_rows(tables: dict[str, torch.Tensor], needed: dict[str, list[int]]) -> dict[str, list[int]]:
    return {name: [i for i in idx if torch.isnan(tables[name][i]).any()] for name, idx in needed.items()}


@torch.no_grad()
def fill_rows(model, tables, splits, missing: dict[str, list[int]], collate, pad_id: int, batch_pairs: int,
              lean: bool, device) -> None:
    """Compute reference log-probs for the missing rows only (a run uses only the pairs its steps reach)."""
    bar = tqdm(total=sum(len(v) for v in missing.values()), desc="reference log-probs (cached for reuse)",
               unit="pair", dynamic_ncols=True)
    for name, rows in missing.items():
        for start in range(0, len(rows), batch_pairs):
            chunk = rows[start:start + batch_pairs]
            batch = collate([splits[name][i] for i in chunk], pad_id).to(device)
            lp = batch_logps(model, batch, lean=lean)
            tables[name][torch.tensor(chunk)] = torch.stack([lp.chosen, lp.rejected], dim=1).float().cpu()
            bar.update(len(chunk))
    bar.close()


def save_cache(path: Path, key: str, tables: dict[str, torch.Tensor], model_dir: Path) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({k: v.contiguous() for k, v in tables.items()}, str(tmp),
              metadata={"key": key, "reference": str(model_dir)})
    tmp.replace(path)  # atomic: a killed precompute leaves no half cache


def cache_path_for(key: str) -> Path:
    return cache_dir() / "reference" / f"{key}.safetensors"
