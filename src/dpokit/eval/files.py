"""The edges of the eval commands: which models a run folder means, the output folder, JSON/JSONL writing."""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..data.io import read_jsonl, write_jsonl  # noqa: F401  (their home is data/io; commands import them here)
from ..errors import UserError


@dataclass(frozen=True)
class ModelPair:
    """What `--model` / `--ref` name, resolved: the policy, its reference, and the run config when --model is a run."""

    model: str  # as given (a run folder shows as RUN/final)
    model_path: Path
    ref: str
    ref_path: Path
    run: Path | None = None
    run_config: object | None = None  # DPOConfig of the run

    @property
    def same(self) -> bool:
        return self.model_path.resolve() == self.ref_path.resolve()


def is_run_dir(path: Path) -> bool:
    return path.is_dir() and (path / "config.yaml").is_file() and (path / "final").is_dir()


def read_run_config(run: Path):
    """The resolved config a `dpokit dpo` run wrote into its folder."""
    from ..config import DPOConfig, build_config, read_yaml

    return build_config(DPOConfig, read_yaml(str(run / "config.yaml")), source=str(run / "config.yaml"))


def resolve_models(model: str, ref: str | None, *, allow_pickle: bool = False, need_ref: bool = True) -> ModelPair:
    """`--model` a run folder → RUN/final, and the reference defaults to the run's (`ref`, else its starting `model`:
    with LoRA that is the base the adapters were switched off on, so the same weights). Otherwise --ref is needed
    (with `need_ref=False` a missing reference is the policy itself)."""
    from ..models import resolve_model_path

    run, run_config = None, None
    path = Path(model).expanduser()
    if is_run_dir(path):
        run, run_config = path, read_run_config(path)
        model = str(path / "final")
        if ref is None and need_ref:
            ref = run_config.ref or run_config.model
    if ref is None and not need_ref:
        ref = model
    if ref is None:
        raise UserError(f"--model {model!r} is not a run folder (config.yaml and final/), so its reference is unknown; "
                        "pass --ref (the model it was trained from)")
    return ModelPair(model, resolve_model_path(model, allow_pickle=allow_pickle), ref,
                     resolve_model_path(ref, allow_pickle=allow_pickle), run, run_config)


def load_models(pair: ModelPair, *, dtype: str | None = None, allow_pickle: bool = False):
    """(policy, reference, tokenizer) in eval mode on the GPU if there is one; LoRA adapter folders are merged.
    When --model and --ref are the same folder the reference IS the policy (one copy, identical numbers)."""
    import torch

    from ..models import default_dtype, load_model, load_tokenizer

    dtype = dtype or default_dtype()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(pair.model_path)
    policy = load_model(pair.model_path, dtype=dtype, train=False, allow_pickle=allow_pickle).to(device)
    reference = policy if pair.same else load_model(pair.ref_path, dtype=dtype, train=False,
                                                    allow_pickle=allow_pickle).to(device)
    return policy, reference, tokenizer


def prepare_out(out: Path, overwrite: bool) -> Path:
    """An empty output folder; a non-empty one only with --overwrite (then its content is deleted)."""
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {str(out)!r} is a file, not a folder")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise UserError(f"--out {str(out)!r} is not empty; pass --overwrite to replace it or choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    return out




def write_json(path: Path, value) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=2, ensure_ascii=False), encoding="utf-8")
    tmp.replace(path)


def default_out(pair: ModelPair, name: str) -> Path:
    """RUN/NAME for a run folder, else NAME-<model folder name> in the working directory."""
    if pair.run is not None:
        return pair.run / name
    return Path(f"{name}-{Path(pair.model).name or 'model'}")
