"""Batched, seeded sampling from a local model (full folder or LoRA adapter): used by generate, chat and eval.

A prompt is a string or a list of chat messages ({"role", "content"}). It is rendered (data/templates) with the
tokenizer's chat template (generation prompt added) when the tokenizer has one, as plain text otherwise (or, for
strings, when asked: `template=False`, the way training treats plain-text pairs). Batches are left-padded so every
completion starts right after its own prompt; temperature 0 is greedy decoding.
"""
from __future__ import annotations

import inspect
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch

from .data.templates import Prompt, render_prompt, templated  # chat.py imports render_prompt from here
from .errors import DataError, UserError
# Loading lives in models.py; export.py and chat.py import these names from here.
from .models import ADAPTER_CONFIG, adapter_base, has_tokenizer, load_for_generation, model_folder  # noqa: F401
from .models import is_adapter_dir as is_adapter  # noqa: F401

COH_FILE = "dpokit_coh.json"
COH_DEFAULTS = {"positive": "A helpful answer:", "negative": "An unhelpful answer:"}


# ---- prompts ------------------------------------------------------------------------------------------------------

def check_prompt(value: Any, origin: str, field: str = "prompt") -> Prompt:
    """A prompt as read from a file, or DataError naming file:line and field."""
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{origin}: field {field!r} is empty; give the prompt text")
        return value
    if isinstance(value, list) and value:
        for i, message in enumerate(value):
            if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                    and isinstance(message.get("content"), str)):
                raise DataError(f"{origin}: field {field!r}[{i}] must be an object with string 'role' and 'content'")
        return value
    kind = "missing" if value is None else f"a {type(value).__name__}"
    raise DataError(f"{origin}: field {field!r} is {kind}; give a string or a non-empty list of "
                    "{\"role\", \"content\"} messages")


def read_prompts(path: str | Path) -> list[tuple[dict, Prompt]]:
    """Rows of a prompts file: (the row as written, its prompt). A .txt file has one prompt per non-blank line;
    anything else is read as data (.jsonl, .json, .csv, .parquet) and must have a `prompt` field."""
    path = Path(path)
    if path.suffix.lower() == ".txt":
        try:
            text = path.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise DataError(f"{path}: file not found") from None
        except UnicodeDecodeError:
            raise DataError(f"{path}: invalid UTF-8; save the file as UTF-8") from None
        rows = [({"prompt": line}, line) for line in text.splitlines() if line.strip()]
        if not rows:
            raise DataError(f"{path}: no prompts (the file has no non-blank line)")
        return rows
    from .data.io import read_records

    rows = []
    for record in read_records(path):
        rows.append((record.value, check_prompt(record.value.get("prompt"), record.origin)))
    return rows


# ---- Chain of Hindsight -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CohPhrases:
    positive: str = COH_DEFAULTS["positive"]
    negative: str = COH_DEFAULTS["negative"]


def load_coh_phrases(model_dir: str | Path) -> CohPhrases:
    """The phrases a Chain of Hindsight run was trained with (`dpokit_coh.json`), or the defaults."""
    where = Path(model_dir) / COH_FILE
    if not where.is_file():
        return CohPhrases()
    try:
        data = json.loads(where.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{where}: cannot read ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k, ""), str) for k in COH_DEFAULTS):
        raise UserError(f"{where}: expected {{\"positive\": TEXT, \"negative\": TEXT}}")
    return CohPhrases(**{k: data.get(k, v) for k, v in COH_DEFAULTS.items()})


def coh_prefix(rendered: str, phrases: CohPhrases) -> str:
    """Ask for the helpful side: 'PROMPT<assistant>\\n' → 'PROMPT<assistant>\\nA helpful answer:'.

    No trailing space: in training the space after the phrase belongs to the answer's first token (data/sft.py)."""
    return rendered + phrases.positive


def cut_at_negative(completion: str, phrases: CohPhrases) -> str:
    """Keep the helpful answer only: 'Sure.\\nAn unhelpful answer: no' → 'Sure.'."""
    return completion.split("\n" + phrases.negative, 1)[0].strip()


# ---- sampling -----------------------------------------------------------------------------------------------------

def eos_ids(model, tokenizer) -> list[int]:
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = configured if isinstance(configured, list) else [] if configured is None else [configured]
    return sorted(set(ids) | {tokenizer.eos_token_id})


def sampling_args(model, tokenizer, *, max_new_tokens: int, temperature: float, top_p: float) -> dict:
    """model.generate keyword arguments: greedy at temperature 0, nucleus sampling otherwise."""
    if temperature < 0 or not 0 < top_p <= 1 or max_new_tokens < 1:
        raise UserError(f"need temperature >= 0, 0 < top-p <= 1 and max-new-tokens >= 1 "
                        f"(got {temperature}, {top_p}, {max_new_tokens})")
    args = {"max_new_tokens": max_new_tokens, "pad_token_id": tokenizer.pad_token_id,
            "eos_token_id": eos_ids(model, tokenizer)}
    if temperature == 0:
        return {**args, "do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    return {**args, "do_sample": True, "temperature": temperature, "top_p": top_p, "top_k": None}


def encode(tokenizer, texts: list[str], *, special: bool | list[bool] = False) -> dict:
    """Left-padded input_ids and attention_mask (B, T). `special`: add the tokenizer's special tokens (BOS),
    per text; chat-rendered prompts carry their own, plain text needs them."""
    specials = special if isinstance(special, list) else [special] * len(texts)
    ids = [tokenizer(text, add_special_tokens=s)["input_ids"] for text, s in zip(texts, specials)]
    tokenizer.padding_side = "left"
    return tokenizer.pad({"input_ids": ids}, padding=True, return_tensors="pt")


@torch.no_grad()
def generate(model, tokenizer, prompts: Iterable[Prompt], *, max_new_tokens: int = 128, temperature: float = 0.7,
             top_p: float = 1.0, seed: int = 0, batch_size: int = 8, coh: CohPhrases | None = None,
             template: bool = True, progress: bool = False, return_ids: bool = False, per_prompt: int = 1) -> list:
    """`per_prompt` completions per prompt, prompt-major ([p0 s0, p0 s1, …, p1 s0, …]). Seeded: the same call gives
    the same text (the global RNG is restored afterwards). `batch_size` counts sequences per model.generate call (a
    prompt's copies stay in one call). With `coh`, the helpful-answer phrase is appended and completions end before
    the unhelpful one. With `return_ids`, each item is a `Sampled`: the text plus the exact prompt ids the model saw
    and the ids it sampled (up to and including the first EOS), so log-probs can be taken of exactly these tokens."""
    from tqdm.auto import tqdm

    if batch_size < 1 or per_prompt < 1:
        raise UserError(f"batch size and samples per prompt must be at least 1 (got {batch_size}, {per_prompt})")
    prompts = list(prompts)
    texts = [render_prompt(tokenizer, p, template=template) for p in prompts]
    specials = [not templated(tokenizer, p, template) for p in prompts]
    if coh is not None:
        texts = [coh_prefix(t, coh) for t in texts]
    args = sampling_args(model, tokenizer, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    device = next(model.parameters()).device
    completions: list[str] = []
    ids: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    step = max(1, batch_size // per_prompt)  # prompts per call
    starts = range(0, len(texts), step)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        for start in tqdm(starts, desc="generate", unit="batch", disable=not progress, file=sys.stderr):
            batch = encode(tokenizer, texts[start:start + step], special=specials[start:start + step]).to(device)
            out = sample_shared_prompt(model, batch, per_prompt, args)  # (B × per_prompt, T + new)
            new = out[:, batch["input_ids"].shape[1]:]
            completions += tokenizer.batch_decode(new, skip_special_tokens=True)
            if return_ids:
                seen = [tuple(row[mask.bool()].tolist()) for row, mask in zip(batch["input_ids"], batch["attention_mask"])]
                ids += [(seen[i // per_prompt], until_eos(sampled, args["eos_token_id"]))
                        for i, sampled in enumerate(new.tolist())]
    if coh is not None:
        completions = [cut_at_negative(c, coh) for c in completions]
    if return_ids:
        return [Sampled(text, prompt_ids, completion_ids) for text, (prompt_ids, completion_ids) in zip(completions, ids)]
    return completions


def sample_shared_prompt(model, batch: dict, k: int, args: dict) -> torch.Tensor:
    """k samples per row of a left-padded batch. The prompts are read once: one forward over all but their last token
    fills a KV cache, repeated k times, and model.generate continues from it (a prompt's prefill costs as much as
    ~all its answer's tokens on a CPU, so k copies of it were k − 1 wasted). Positions are numbered as model.generate
    numbers left-padded rows, so the cache is the one generate would have built."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if k == 1 or ids.shape[1] < 2:
        return model.generate(input_ids=ids.repeat_interleave(k, 0), attention_mask=mask.repeat_interleave(k, 0), **args)
    names = inspect.signature(getattr(model, "get_base_model", lambda: model)().forward).parameters
    cache_name = "cache" if "cache" in names else "past_key_values"  # renamed in transformers 5
    position = (mask.long().cumsum(-1) - 1).masked_fill(mask == 0, 0)
    keep = {"logits_to_keep": 1} if "logits_to_keep" in names else {}
    prefix = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=position[:, :-1], use_cache=True,
                   **keep)
    cache = getattr(prefix, cache_name, None) or prefix.past_key_values
    cache.batch_repeat_interleave(k)
    return model.generate(input_ids=ids.repeat_interleave(k, 0), attention_mask=mask.repeat_interleave(k, 0),
                          **{cache_name: cache}, **args)


@dataclass(frozen=True)
class Sampled:
    """One sampled completion: its text (after any --coh cut) and the token ids behind it (never cut)."""

    text: str
    prompt_ids: tuple[int, ...]
    completion_ids: tuple[int, ...]


def until_eos(ids: list[int], eos_ids: list[int]) -> tuple[int, ...]:
    """Sampled ids up to and including the first EOS; what follows is padding. (5, 7, EOS, PAD) → (5, 7, EOS)."""
    for i, token in enumerate(ids):
        if token in eos_ids:
            return tuple(ids[:i + 1])
    return tuple(ids)


def stream_reply(model, tokenizer, prompt: Prompt, *, max_new_tokens: int, temperature: float, top_p: float = 1.0,
                 out=None, template: bool = True) -> str:
    """Generate one reply, printing its text to `out` (stdout) as tokens arrive; return the whole reply."""
    from transformers import TextStreamer

    class _Streamer(TextStreamer):
        def on_finalized_text(self, text: str, stream_end: bool = False):
            (out or sys.stdout).write(text)
            (out or sys.stdout).flush()

    batch = encode(tokenizer, [render_prompt(tokenizer, prompt, template=template)],
                   special=not templated(tokenizer, prompt, template))
    batch = batch.to(next(model.parameters()).device)
    args = sampling_args(model, tokenizer, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p)
    streamer = _Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    with torch.no_grad():
        ids = model.generate(**batch, **args, streamer=streamer)
    return tokenizer.decode(ids[0, batch["input_ids"].shape[1]:], skip_special_tokens=True)


def generate_file(model_spec: str, prompts_path: str, out_path: str, *, overwrite: bool = False, coh: bool = False,
                  template: bool = True, **sampling) -> int:
    """`dpokit generate`: prompts file → JSONL rows {**row, "prompt", "completion"}; returns the row count."""
    out = Path(out_path)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; choose another --out or pass --overwrite")
    rows = read_prompts(prompts_path)  # bad input fails before any weights load
    model, tokenizer = load_for_generation(model_spec)
    phrases = load_coh_phrases(model_folder(model_spec)) if coh else None
    completions = generate(model, tokenizer, [prompt for _, prompt in rows], coh=phrases, template=template,
                           progress=True, **sampling)
    tmp = out.with_name(out.name + ".tmp")
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", encoding="utf-8") as f:
        for (row, prompt), completion in zip(rows, completions):
            f.write(json.dumps({**row, "prompt": prompt, "completion": completion}, ensure_ascii=False) + "\n")
    tmp.replace(out)
    return len(rows)
