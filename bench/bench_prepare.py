"""What every run of the benchmark shares: the models, the pairs (in the order both trainers consume them) and the
compute floor. Nothing here trains or times a trainer."""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base" / "test.jsonl.gz"
SMOLLM2 = "smollm2-135m-instruct"  # dpokit's embedded model name: the GGUF converted once to an HF folder
MAX_LENGTH = 512
SEED = 0

# The tiny Llama: SmolLM2's tokenizer and 49,152-token vocabulary, tied embeddings, SmolLM2's head size (64) and
# its 3:1 query:key-value head ratio rounded to 2:1, 4 layers of width 256. About 15.7M parameters, 80% of them
# the (tied) embedding, so the LM head dominates its cost as it does for small real models.
TINY = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
            head_dim=64, max_position_embeddings=2048, tie_word_embeddings=True, rms_norm_eps=1e-5)


@dataclass(frozen=True)
class Workload:
    """One benchmark configuration: a model folder and the pairs of every step, in training order."""

    name: str
    model_dir: Path
    batch_size: int  # pairs per optimizer step
    steps: int
    folder: Path  # holds ids.json (TRL order) and pairs.jsonl (dpokit's file order)

    @property
    def ids_file(self) -> Path:
        return self.folder / "ids.json"

    @property
    def pairs_file(self) -> Path:
        return self.folder / "pairs.jsonl"


def smollm2_dir() -> Path:
    from dpokit.models import resolve_model_path

    return resolve_model_path(SMOLLM2)  # ~40 s the first time (GGUF → float32 safetensors), cached after


def tiny_llama_dir(workdir: Path) -> Path:
    """The tiny Llama, randomly initialised with seed 0, saved once as an HF folder with SmolLM2's tokenizer."""
    target = workdir / "tiny-llama-seed0"
    if (target / "config.json").is_file():
        return target
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(smollm2_dir()))
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, **TINY)
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    tmp = target.with_name(target.name + ".tmp")
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    tmp.rename(target)
    return target


def whole_pairs(tokenizer, count: int):
    """The first `count` pairs of hh-rlhf harmless (test split) that fit MAX_LENGTH without any truncation.

    Returns (PreferencePair, TokenizedPair) tuples. The prompt is the transcript through its last
    "\\n\\nAssistant:"; completions end with EOS (dpokit's tokenization, which TRL's equals on plain text).
    """
    from dpokit.data.tokenize import tokenize_pairs
    from dpokit.data.validate import load_pairs

    pairs = load_pairs(DATA, skip_invalid=True).pairs
    kept = []
    for start in range(0, len(pairs), 64):
        chunk = pairs[start:start + 64]
        report = tokenize_pairs(tokenizer, chunk, max_length=MAX_LENGTH, max_prompt_length=None, skip_invalid=True)
        by_origin = {t.origin: t for t in report.pairs if not t.truncated}
        kept += [(p, by_origin[p.origin]) for p in chunk if p.origin in by_origin]
        if len(kept) >= count:
            return kept[:count]
    raise SystemExit(f"{DATA}: only {len(kept)} pairs fit {MAX_LENGTH} tokens whole; asked for {count}")


def write_workload(name: str, model_dir: Path, batch_size: int, steps: int, folder: Path) -> Workload:
    """Pairs for `steps` steps, written for both trainers so that step s sees the same pairs in each.

    TRL reads ids.json front to back (sequential sampler): step s takes rows [sB, (s+1)B). dpokit takes, at
    step s, file rows pair_order(N, s, B, seed), a seeded permutation; pairs.jsonl is written so that those rows
    hold the same pairs: file row perm[k] = pair k.
    """
    from dpokit.models import load_tokenizer
    from dpokit.train.source import pair_order

    folder.mkdir(parents=True, exist_ok=True)
    n = batch_size * steps
    chosen = whole_pairs(load_tokenizer(model_dir), n)
    ids = [{"prompt_ids": list(t.prompt_ids), "chosen_ids": list(t.chosen_ids), "rejected_ids": list(t.rejected_ids)}
           for _, t in chosen]
    (folder / "ids.json").write_text(json.dumps(ids))
    perm = pair_order(n, 0, n, SEED)  # the whole first epoch
    rows = [None] * n
    for k, row in enumerate(perm):
        pair = chosen[k][0]
        rows[row] = {"prompt": pair.prompt, "chosen": pair.chosen, "rejected": pair.rejected}
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return Workload(name, model_dir, batch_size, steps, folder)


# ---------------------------------------------------------------------------------------------------------------
# The compute floor: the FLOPs a step cannot avoid, at the machine's measured matmul rate.

def matmul_gflops(size: int = 2048, repeats: int = 5) -> float:
    """Best-of-`repeats` float32 torch.mm rate in GFLOP/s, with torch's default thread count."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - started)
    return 2 * size ** 3 / best / 1e9


@dataclass(frozen=True)
class ModelShape:
    params: int  # every parameter once (the tied embedding is the LM head: it is a matmul per token)
    layers: int
    attention_width: int  # query heads × head size

    @classmethod
    def of(cls, model_dir: Path) -> "ModelShape":
        from dpokit.memory import count_parameters

        params, cfg = count_parameters(model_dir)
        head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(params, cfg.num_hidden_layers, cfg.num_attention_heads * head_dim)


def step_flops(shape: ModelShape, step_pairs: list[dict], live_reference: bool) -> float:
    """FLOPs of one optimizer step on its useful tokens (chosen and rejected sequences, prompt counted in both).

    Forward = 2·P per token + causal attention 2·layers·width·L² per sequence of length L; the policy's
    backward is twice its forward; a live reference adds one more forward.
    """
    lengths = [len(p["prompt_ids"]) + len(p[side]) for p in step_pairs for side in ("chosen_ids", "rejected_ids")]
    forward = 2 * shape.params * sum(lengths) + 2 * shape.layers * shape.attention_width * sum(n * n for n in lengths)
    return forward * (4 if live_reference else 3)


def step_token_counts(workload: Workload) -> list[int]:
    ids = json.loads(workload.ids_file.read_text())
    b = workload.batch_size
    return [sum(2 * len(p["prompt_ids"]) + len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in ids[s * b:(s + 1) * b])
            for s in range(workload.steps)]
