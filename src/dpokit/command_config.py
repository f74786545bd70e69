"""One frozen dataclass per command that does not train (the training commands' are in config.py).

The same system as training: help, YAML keys (--config FILE.yaml), flags and defaults come from the fields; unknown
keys are refused; flags given on the command line win over the file. Defaults shared with training (max_length,
max_prompt_length, beta) are read from DPOConfig, so each has one home.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

from .config import DPOConfig, opt
from .data.lists import POLICIES as PAIRING
from .models import DTYPES
from .plan import PlanSettings, ZERO_CHOICES

TRAIN = {f.name: f for f in dataclasses.fields(DPOConfig)}
MAX_LENGTH, MAX_PROMPT_LENGTH, BETA = (TRAIN[k].default for k in ("max_length", "max_prompt_length", "beta"))


def required(help: str, **extra):
    return opt(None, help, required=True, **extra)


def positional(help: str):
    return opt(None, help, required=True, positional=True)


def output(help: str, default=None, **extra):
    """--output everywhere; --out, the older spelling, still works."""
    return opt(default, help, aliases=("--out",), **extra)


MODEL_HELP = "model folder, LoRA adapter folder, run folder (its final/) or .gguf"
READING = dict(
    columns=opt(None, TRAIN["columns"].metadata["help"] + " (default for a run: its own)", mapping=True),
    pairs=opt(None, TRAIN["pairs"].metadata["help"] + " (default: the run's, else best-vs-worst)", choices=PAIRING),
)


@dataclass(frozen=True)
class ValidateConfig:
    path: Optional[str] = positional("data file or save_to_disk folder")
    model: Optional[str] = opt(None, "tokenizer for token-length percentiles (default: the embedded model)")
    max_length: int = opt(MAX_LENGTH, "as in dpo: the truncation counts shown are for this max_length")
    max_prompt_length: int = opt(MAX_PROMPT_LENGTH, "as in dpo")
    no_tokens: bool = opt(False, "skip token statistics (no tokenizer needed)")
    no_chat_template: bool = opt(False, "count tokens of text prompts as training with --no-chat-template does "
                                        "(verbatim)")
    columns: Optional[str] = opt(None, TRAIN["columns"].metadata["help"] + "; the first mapped row and the first "
                                       "pair are printed, to check a mapping", mapping=True)
    pairs: str = opt("best-vs-worst", TRAIN["pairs"].metadata["help"], choices=PAIRING)


@dataclass(frozen=True)
class ReportConfig:
    run: Optional[str] = positional("run folder (the --output of dpokit dpo)")


@dataclass(frozen=True)
class GenerateConfig:
    model: Optional[str] = required(MODEL_HELP)
    prompts: Optional[str] = required("prompts file (.jsonl with a `prompt` field, or .txt)")
    output: Optional[str] = output("output JSONL file (never overwritten without --overwrite)", required=True)
    max_new_tokens: int = opt(128, "tokens to sample at most per completion")
    temperature: float = opt(0.7, "sampling temperature; 0: greedy")
    top_p: float = opt(1.0, "nucleus sampling: keep the smallest set of tokens whose probability reaches top-p")
    seed: int = opt(0, "same seed, same outputs")
    batch_size: int = opt(8, "prompts per batch")
    coh: bool = opt(False, "Chain of Hindsight model: ask for the helpful answer (phrases from the model's "
                           "dpokit_coh.json) and cut where the unhelpful one begins")
    no_chat_template: bool = opt(False, "text prompts as plain text (default: as the run trained, which its "
                                        "config.yaml records; other models: templated). Chat messages always are")
    overwrite: bool = opt(False, "replace an existing --output")
    best_of: int = opt(1, "sample N per prompt and keep the one with the highest reward (rows record all N scores)")
    judge_ref: Optional[str] = opt(None, "with --best-of: the reference of the implicit reward β·(log π − log π_ref) "
                                         "(default for a run folder: its reference)")
    reward: Optional[str] = opt(None, "with --best-of: hf:PATH, py:MODULE:FUNCTION or implicit (the default)")
    beta: float = opt(BETA, "β of the implicit reward")


@dataclass(frozen=True)
class EvalConfig:
    model: Optional[str] = required("model folder, LoRA adapter folder, embedded name, or a run folder (its final/, "
                                    "its reference, its settings)")
    ref: Optional[str] = opt(None, "reference model (default for a run folder: its --ref, else the model it started "
                                   "from)")
    data: Optional[str] = opt(None, "preference pairs in any shape `dpokit dpo` takes, or bundled:hh-rlhf-harmless "
                                    "(default for a run: its data)")
    columns: Optional[str] = READING["columns"]
    pairs: Optional[str] = READING["pairs"]
    split: str = opt("all", "heldout / train: the run's by-prompt split, reproduced from its config.yaml (--model "
                            "must be a run folder)", choices=("all", "heldout", "train"))
    beta: Optional[float] = opt(None, f"β of the implicit reward (default: the run's, else {BETA})")
    output: Optional[str] = output("output folder (default RUN/eval-SPLIT or RUN/eval-generate for a run, else "
                                   "eval-SPLIT-MODELNAME); never overwritten without --overwrite")
    overwrite: bool = opt(False, "replace a non-empty --output")
    max_length: Optional[int] = opt(None, f"as in dpo (default: the run's, else {MAX_LENGTH})")
    max_prompt_length: Optional[int] = opt(None, f"as in dpo (default: the run's, else {MAX_PROMPT_LENGTH})")
    batch_size: int = opt(8, "pairs (or samples) per forward pass")
    layout: str = opt("shared", "batch layout (the same numbers either way)", choices=("shared", "padded"))
    skip_invalid: bool = opt(False, "drop invalid rows instead of stopping")
    dtype: Optional[str] = opt(None, "float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on GPUs that "
                                     "support it)", choices=tuple(DTYPES))
    allow_pickle: bool = opt(False, "allow pickle (.bin) model weights")
    generate: bool = opt(False, "generation eval: sample, score with --reward, compare")
    prompts: Optional[str] = opt(None, "--generate: prompts file (as for dpokit generate); or use --data")
    max_prompts: Optional[int] = opt(None, "--generate: use the first N prompts (default: all)")
    k: int = opt(4, "--generate: samples per prompt from each model")
    reward: str = opt("implicit", "--generate: hf:PATH (sequence classifier), py:MODULE:FUNCTION, or implicit")
    temperature: float = opt(1.0, "--generate: sampling temperature")
    top_p: float = opt(1.0, "--generate: nucleus sampling threshold")
    seed: int = opt(0, "--generate: both models sample with this seed")
    max_new_tokens: int = opt(64, "--generate: tokens to sample at most per response")
    no_chat_template: bool = opt(False, "text prompts as plain text, without the chat template (default: as the run "
                                        "trained, which its config.yaml records; other models: templated)")


@dataclass(frozen=True)
class ScoreConfig:
    model: Optional[str] = required("model folder, LoRA adapter folder or run folder")
    ref: Optional[str] = opt(None, "reference model (default for a run folder: its reference)")
    prompt: Optional[str] = opt(None, "the prompt, as text (a user turn when the chat template is used)")
    candidates: Optional[str] = opt(None, ".txt (one per line) or JSONL of candidate responses")
    candidates_jsonl: Optional[str] = opt(None, "rows {prompt, candidates: [...]} (prompt may be chat messages)")
    beta: Optional[float] = opt(None, f"β (default: the run's, else {BETA})")
    output: str = output("JSONL of ranked candidates", "scores.jsonl")
    overwrite: bool = opt(False, "replace an existing --output")
    max_length: int = opt(MAX_LENGTH, "as in dpo")
    max_prompt_length: int = opt(MAX_PROMPT_LENGTH, "as in dpo")
    batch_size: int = opt(8, "candidates per forward pass")
    dtype: Optional[str] = opt(None, "float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on GPUs that "
                                     "support it)", choices=tuple(DTYPES))
    allow_pickle: bool = opt(False, "allow pickle (.bin) model weights")
    no_chat_template: bool = opt(False, "text prompts as plain text, without the chat template (default: as the run "
                                        "trained; other models: templated)")


@dataclass(frozen=True)
class ChatConfig:
    model: Optional[str] = required(MODEL_HELP)
    system: Optional[str] = opt(None, "system message kept at the top of the conversation")
    temperature: float = opt(0.7, "sampling temperature; 0: greedy")
    top_p: float = opt(1.0, "nucleus sampling threshold")
    max_new_tokens: int = opt(256, "tokens to sample at most per reply")
    seed: int = opt(0, "sampling seed")


@dataclass(frozen=True)
class ExportConfig:
    source: Optional[str] = positional("run folder (its final/ is used) or model / adapter folder")
    output: Optional[str] = output("folder to write (written whole: OUTPUT.tmp, then renamed)", required=True)
    merge: bool = opt(False, "merge a LoRA adapter into its base model")
    overwrite: bool = opt(False, "replace a non-empty --output")


PLAN = PlanSettings()


@dataclass(frozen=True)
class PlanConfig:
    """The run to plan; unset settings take PlanSettings' defaults (a GPU run) or, with --cpu, a CPU run's."""

    model: Optional[str] = required("model folder, its config.json, a .gguf file, or the embedded name")
    gpus: Optional[int] = opt(None, f"devices (default {PLAN.gpus})")
    gpu_mem_gb: Optional[float] = opt(None, f"GB per device (default {PLAN.gpu_mem_gb:g})", aliases=("--gpu-mem",))
    cpu: bool = opt(False, "plan a one-process CPU run (--gpu-mem = RAM)")
    lora: Optional[bool] = opt(None, "train LoRA adapters (reference = adapters off)")
    lora_r: Optional[int] = opt(None, f"LoRA rank (default {PLAN.lora_r})")
    lora_targets: Optional[str] = opt(None, "comma-separated module names or all-linear (default; LM head excluded)")
    batch_size: Optional[int] = opt(None, f"pairs per optimizer step over all devices (default {PLAN.batch_size})")
    grad_accum: Optional[int] = opt(None, f"micro-batches per step (default {PLAN.grad_accum})")
    max_length: Optional[int] = opt(None, f"max tokens of prompt + answer (default {PLAN.max_length})")
    prompt_length: Optional[int] = opt(None, "prompt tokens of a longest pair (default max-length / 2)")
    dtype: Optional[str] = opt(None, f"weight dtype (default {PLAN.dtype}; float32 with --cpu or --mixed-precision)",
                               choices=tuple(DTYPES))
    mixed_precision: Optional[str] = opt(None, "autocast over float32 weights (default no)", choices=("no", "bf16", "fp16"))
    gradient_checkpointing: Optional[bool] = opt(None, "recompute activations in backward (default off)")
    reference_cache: Optional[str] = opt(None, "on (default): cached log-probs; off: live model", choices=("on", "off"))
    loss: Optional[str] = opt(None, "the run's --loss (default sigmoid); simpo and orpo need no reference at all")
    zero: Optional[str] = opt(None, "0 = DDP (default), 2/3 = DeepSpeed ZeRO stage, fsdp = FSDP full shard",
                              choices=ZERO_CHOICES)
    layout: Optional[str] = opt(None, f"batch layout (default {PLAN.layout})", choices=("shared", "packed", "padded"))
    full_logits: Optional[bool] = opt(None, "logits at every position (default: lean, answer tokens only)")
    attention: Optional[str] = opt(None, "eager keeps the attention scores for backward (default sdpa)",
                                   choices=("sdpa", "eager"))
    cpu_malloc: Optional[str] = opt(None, "with --cpu: the run's allocator policy (default glibc)",
                                    choices=("glibc", "lean"))
    utilization: Optional[float] = opt(None, f"share of peak FLOP/s reached (default {PLAN.utilization})")
    tflops: Optional[float] = opt(None, f"peak TFLOP/s per device (default {PLAN.tflops:g}: H100 SXM bf16 dense)")
