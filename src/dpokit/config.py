"""One frozen dataclass per command. Help text, YAML keys and CLI flags all come from its fields.

Precedence: dataclass defaults < --config FILE.yaml < explicit CLI flags. Unknown keys and impossible
combinations raise UserError naming the key and the fix.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, get_type_hints

import yaml

from .data.columns import parse_columns
from .data.lists import POLICIES as PAIRING
from .errors import UserError
from .losses import LOSSES, is_feedback_loss, loss_terms, needs_reference
from .models import DTYPES, EMBEDDED_MODEL

DEFAULT_DATA = "bundled:hh-rlhf-harmless"  # the sample shipped inside the package


def opt(default, help: str, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass(frozen=True)
class TrainConfig:
    """Settings every training command shares (dpo, sft, coh): data, optimizer, schedule, run folder, LoRA."""

    model: str = opt(EMBEDDED_MODEL, "model to start from: local HF folder, a LoRA adapter folder, .gguf file, or the embedded default")
    data: str = opt(DEFAULT_DATA, "training data: JSONL/JSON/CSV/Parquet (.gz ok) or a save_to_disk folder")
    eval_data: Optional[str] = opt(None, "held-out data (default: split --eval-fraction of --data by prompt)")
    columns: Optional[str] = opt(None, "read rows of another shape: TARGET=PATH entries, e.g. prompt=question,"
                                       "chosen=answers[0],rejected=answers[-1]; paths a.b, x[0], x[-1], x[*].y; "
                                       "a+b joins fields (YAML: a mapping). Applies to --data and --eval-data",
                                 mapping=True)
    pairs: str = opt("best-vs-worst", "how ranked or scored lists become pairs", choices=PAIRING)
    eval_fraction: Optional[float] = opt(None, "share of prompts held out when --eval-data is not given (default 0.1; 0 disables eval)")
    max_eval_pairs: Optional[int] = opt(None, "evaluate on at most this many held-out examples")
    output: str = opt("runs/dpo", "run folder: metrics.jsonl, config.yaml, checkpoints, final/")
    learning_rate: float = opt(5e-7, "peak learning rate of AdamW (default 5e-07; the no-argument run sets its own in "
                                     "assets/default_run.yaml)")
    weight_decay: float = opt(0.0, "AdamW weight decay")
    warmup_steps: int = opt(0, "linear warm-up steps")
    lr_schedule: str = opt("linear", "decay after warm-up", choices=("linear", "cosine", "constant"))
    batch_size: int = opt(8, "examples (pairs for dpo) per optimizer step")
    grad_accum: int = opt(1, "micro-batches per step (batch-size must divide by it)")
    max_grad_norm: float = opt(10.0, "clip gradients to this global norm (0 = no clipping)")
    max_length: int = opt(512, "max tokens of prompt + completion")
    max_prompt_length: Optional[int] = opt(256, "prompt is cut from its start to this many tokens when an example is too long")
    max_steps: Optional[int] = opt(None, "optimizer steps to run (overrides --epochs)")
    epochs: float = opt(1.0, "passes over the training data when --max-steps is not set")
    seed: int = opt(0, "seed for data order, split and initialisation")
    eval_every: int = opt(0, "evaluate every N steps (0 = only at start and end)")
    save_every: int = opt(0, "checkpoint every N steps (0 = only the final model)")
    early_stop: bool = opt(False, "keep the model with the best held-out loss (OUTPUT/best, then final/) and stop after "
                                  "--patience evaluations without improvement (needs --eval-every)")
    patience: int = opt(3, "evaluations without held-out improvement before an overfitting warning (and, with "
                           "--early-stop, before stopping)")
    group_by_length: bool = opt(False, "batch examples of similar length together (sorted within windows of 16 batches)")
    full_logits: bool = opt(False, "compute logits at every position (the obvious path) instead of only at answer tokens")
    attention: str = opt("sdpa", "attention kernels: sdpa (PyTorch's; on a GPU it picks flash or memory-efficient "
                                 "kernels itself), eager, or flash_attention_2 (the flash-attn package on a CUDA GPU; "
                                 "its kernels take no custom mask, so DPO needs --layout padded and SFT no --packing)",
                         choices=("sdpa", "eager", "flash_attention_2"))
    gradient_checkpointing: bool = opt(False, "recompute layer activations in backward: less memory, about a third more compute")
    mixed_precision: str = opt("no", "autocast forward/backward in bf16 or fp16 over float32 weights (accelerate; "
                                     "fp16 uses a loss scale)", choices=("no", "bf16", "fp16"))
    dtype: Optional[str] = opt(None, "float32, bfloat16 or float16 (default: float32 on CPU, bfloat16 on GPUs that support it)",
                               choices=tuple(DTYPES))
    lora_r: int = opt(0, "LoRA rank; 0 = train every weight. With LoRA the reference is the model with adapters off (no copy)")
    lora_alpha: float = opt(16.0, "LoRA scaling numerator (the update is scaled by alpha / r)")
    lora_dropout: float = opt(0.0, "dropout on the LoRA branch")
    lora_targets: str = opt("all-linear", "modules that get adapters: all-linear (every linear layer but the LM head) or "
                                          "a comma-separated list of module names, e.g. q_proj,v_proj")
    load_in_4bit: bool = opt(False, "QLoRA: load the frozen base in 4-bit NF4 (needs --lora-r, a CUDA GPU and bitsandbytes)")
    no_chat_template: bool = opt(False, "train text prompts verbatim (prompt + answer + EOS, no chat template; for a "
                                        "base model or document continuation). Off, with a tokenizer that has a chat "
                                        "template: a text prompt is one user turn and an hh-rlhf transcript the "
                                        "conversation it encodes, as generate and chat use the model")
    skip_invalid: bool = opt(False, "drop invalid rows (counted in the summary) instead of stopping")
    skip_nonfinite: bool = opt(False, "skip (and count) a step whose loss or gradient is NaN/inf instead of stopping")
    keep_checkpoints: int = opt(2, "keep the newest K checkpoints (older ones are deleted after a new one is written)")
    allow_pickle: bool = opt(False, "allow loading pickle (.bin) model weights; off: only safetensors load")
    resume: bool = opt(False, "continue the run in --output from its last checkpoint")
    overwrite: bool = opt(False, "allow writing into a non-empty --output (deletes what is there)")
    trust_remote_code: bool = opt(False, "allow model code from the model folder (off: only transformers' own code runs)")
    log_every: int = opt(1, "write a metrics line every N steps")
    cpu_malloc: str = opt("glibc", "CPU allocator policy: glibc = its own defaults; lean = tensors of 1 MiB or more go "
                                   "back to the system when freed (peak RSS about 10% lower, steps 5-8% slower)",
                          choices=("glibc", "lean"))

    def __post_init__(self):
        check_train_config(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class DPOConfig(TrainConfig):
    ref: Optional[str] = opt(None, "reference model (default: --model before training; with LoRA, --model with adapters off)")
    data: str = opt(DEFAULT_DATA, "preference pairs: JSONL/JSON/CSV/Parquet (.gz ok) or a save_to_disk folder")
    loss: str = opt("sigmoid", "objective: " + ", ".join(LOSSES) + "; or several, comma-separated, combined by "
                               "--loss-weights (e.g. sigmoid,sft)", listing=True)
    loss_weights: Optional[str] = opt(None, "one weight per --loss term, comma-separated (e.g. 1.0,0.5; default: all 1)",
                                      listing=True)
    beta: float = opt(0.1, "β: strength of the KL tie to the reference (usually 0.1–0.5); SimPO's reward scale "
                           "(its paper uses 2–2.5)")
    label_smoothing: float = opt(0.0, "ε for cdpo/sigmoid (conservative DPO), robust and simpo: assumed label-flip rate")
    odpo_alpha: float = opt(1.0, "α for odpo: offset = α·log(1 + margin)")
    gamma: float = opt(0.5, "γ for simpo: the target reward margin")
    orpo_lambda: float = opt(0.1, "λ for orpo: weight of the odds-ratio term beside the chosen NLL")
    desirable_weight: float = opt(1.0, "λ_D for kto: weight of the loss on desirable (thumbs-up) answers")
    undesirable_weight: float = opt(1.0, "λ_U for kto: weight of the loss on undesirable (thumbs-down) answers")
    sft_weight: float = opt(0.0, "weight of a per-token NLL term on chosen answers (RPO); 0 = off")
    layout: str = opt("shared", "batch layout: shared = one [prompt|chosen|rejected] row per pair (prompt computed once); "
                                "packed = several such blocks per row up to --tokens-per-row (no padding); "
                                "padded = prompt+chosen and prompt+rejected rows", choices=("shared", "packed", "padded"))
    tokens_per_row: Optional[int] = opt(None, "packed layout: token budget of one row (default 2 × max_length)")
    warn_chosen_drop: float = opt(5.0, "warn when held-out chosen answers fall this many nats below the reference")
    probe_prompts: int = opt(4, "held-out prompts answered greedily at each evaluation, to catch a breaking generator "
                                "(drift from the reference's answers, loops, answers that stop ending; probe.jsonl); "
                                "0 = off. One process only")
    warn_drift_kl: float = opt(0.5, "warn when the probe's KL(π_ref ‖ π) per token on the reference's answers passes "
                                    "this")
    reference_cache: str = opt("on", "on: reference log-probs computed once, stored under the cache folder and reused by "
                                     "later runs and epochs (no reference model in memory while training); off: run "
                                     "the reference model live every step", choices=("on", "off"))

    def __post_init__(self):
        check_train_config(self)
        check_dpo_config(self)


@dataclass(frozen=True)
class SFTConfig(TrainConfig):
    data: str = opt(DEFAULT_DATA, "examples: prompt/completion, messages, Alpaca (instruction/input/output), ShareGPT "
                                  "conversations, or preference pairs (their chosen answers: Preferred-FT)")
    output: str = opt("runs/sft", "run folder: metrics.jsonl, config.yaml, checkpoints, final/")
    learning_rate: float = opt(2e-5, "peak learning rate of AdamW")
    max_prompt_length: Optional[int] = opt(None, "when an example is too long, its prompt is cut from its start to this "
                                                 "many tokens (default: half of max_length)")
    packing: bool = opt(False, "pack several examples per row up to --tokens-per-row (no padding; examples never see each other)")
    tokens_per_row: Optional[int] = opt(None, "with --packing: token budget of one row (default 2 × max_length)")


@dataclass(frozen=True)
class CoHConfig(SFTConfig):
    data: str = opt(DEFAULT_DATA, "preference pairs: each becomes feedback-conditioned sequences (both orders)")
    output: str = opt("runs/coh", "run folder: metrics.jsonl, config.yaml, checkpoints, final/")
    positive: str = opt("A helpful answer:", "feedback phrase before the chosen answer (and, at inference, before generation)")
    negative: str = opt("An unhelpful answer:", "feedback phrase before the rejected answer")


@dataclass(frozen=True)
class RewardConfig(TrainConfig):
    """`dpokit reward`: a Bradley–Terry reward model (a 1-logit sequence-classification head on --model) trained on
    the same preference files as dpo; its final/ is an `hf:DIR` judge."""

    data: str = opt(DEFAULT_DATA, "preference pairs (or ranked/scored lists): JSONL/JSON/CSV/Parquet (.gz ok) or a "
                                  "save_to_disk folder, as dpo reads them")
    output: str = opt("runs/reward", "run folder: metrics.jsonl, config.yaml, checkpoints, final/ (an hf:DIR judge)")
    learning_rate: float = opt(1e-5, "peak learning rate of AdamW (default 1e-05, a reward-model rate: a new score "
                                     "head on a pretrained body trains at 1e-6–1e-5 in the InstructGPT/TRL recipes, "
                                     "far above DPO's 5e-07)")

    def __post_init__(self):
        check_train_config(self)
        check_reward_config(self)


def check_reward_config(c: RewardConfig) -> None:
    def bad(key: str, why: str):
        raise UserError(f"config: {key}: {why}")

    if c.full_logits:
        bad("full_logits", "a reward model reads one score per sequence, not log-probs at answer tokens; drop it")
    if c.load_in_4bit:
        bad("load_in_4bit", "dpokit reward does not train over a 4-bit base; drop it (--lora-r trains adapters over "
                            "full-precision weights)")
    if c.lora_r and c.early_stop:
        bad("early_stop", "with --lora-r the best model is kept as an adapter, which is no hf: judge; drop one of them")


@dataclass(frozen=True)
class IterateConfig(DPOConfig):
    """`dpokit iterate`: the DPO settings apply to every round's training; these say how rounds make their pairs."""

    NOT_FLAGS: ClassVar[tuple[str, ...]] = ("data", "eval_data", "eval_fraction", "columns", "pairs", "max_eval_pairs",
                                            "ref")  # iterate makes its own pairs: refused in a config file too

    prompts: Optional[str] = opt(None, "prompts to sample from: .jsonl/.json/.csv/.parquet with a `prompt` field (text "
                                       "or chat messages) or .txt, one per line", required=True)
    judge: Optional[str] = opt(None, "who scores the samples: hf:DIR (a reward model, e.g. from dpokit reward), "
                                     "py:MODULE:FUNCTION, implicit:DIR (the policy's implicit reward against DIR), "
                                     "llm:DIR (pairwise), llm-rubric:DIR (5-point rubric) or human:PROJECT (people, "
                                     "in a `dpokit label` project)", required=True)
    output: str = opt("runs/iterate", "run folder: rounds.jsonl, round-R/ (samples, judgments, pairs, train/), "
                                      "report.png")
    rounds: int = opt(3, "rounds of sample → judge → pair → train → evaluate")
    online: bool = opt(False, "online DPO (OAIF): every one of --max-steps optimizer steps trains on a batch just "
                              "sampled from the current policy and judged (P = --prompts-per-round prompts a draw, "
                              "drawn again until --batch-size pairs); one optimizer over the run, a live reference, "
                              "held-out evaluation every --eval-every steps and at the end")
    samples_per_prompt: int = opt(4, "K: responses sampled per prompt each round")
    prompts_per_round: int = opt(64, "P: training prompts sampled each round (the next P of a seeded order, wrapping)")
    pairing: str = opt("best-vs-worst", "how a prompt's K scored samples become pairs: best-vs-worst, random-pair "
                                        "(OAIF) or all-pairs; ties and identical texts are dropped",
                       choices=("best-vs-worst", "random-pair", "all-pairs"))
    min_gap: float = opt(0.0, "drop a pair whose two scores differ by less than this")
    allow_truncated_chosen: bool = opt(False, "let a sample cut off by --max-new-tokens (no EOS) be chosen (off: it "
                                              "may only be rejected)")
    accumulate: bool = opt(False, "train each round on all pairs so far (off: on the round's new pairs)")
    reference: str = opt("start", "the DPO reference of every round: start (the starting model) or previous (the "
                                  "policy as the round began)", choices=("start", "previous"))
    eval_prompts: int = opt(16, "prompts held out of every round (a seeded choice), sampled after each round")
    held_out: Optional[str] = opt(None, "a prompts file to evaluate on instead (then every prompt of --prompts may "
                                        "train; --eval-prompts caps how many of this file are used)")
    eval_samples: int = opt(2, "samples per held-out prompt")
    temperature: float = opt(1.0, "sampling temperature (0: greedy, which gives K equal samples)")
    top_p: float = opt(1.0, "nucleus sampling threshold")
    max_new_tokens: int = opt(64, "tokens sampled at most per response")
    sample_batch_size: int = opt(64, "sequences per generate call (a prompt's K samples share one read of the "
                                      "prompt) and responses per judge or log-prob batch")

    def __post_init__(self):
        super().__post_init__()
        check_iterate_config(self)


def check_iterate_config(c: IterateConfig) -> None:
    def bad(key: str, why: str):
        raise UserError(f"config: {key}: {why}")

    for key, default in (("data", DEFAULT_DATA), ("eval_data", None), ("eval_fraction", None), ("columns", None),
                         ("max_eval_pairs", None), ("pairs", "best-vs-worst")):
        if getattr(c, key) != default:
            bad(key, "iterate makes its own pairs from --prompts and --judge each round; drop it")
    if c.ref:
        bad("ref", "iterate's reference is the starting model (or, with --reference previous, the last round's); "
                   "drop --ref")
    for key in ("rounds", "samples_per_prompt", "prompts_per_round", "eval_samples", "max_new_tokens",
                "sample_batch_size"):
        if getattr(c, key) < 1:
            bad(key, f"must be at least 1, got {getattr(c, key)}")
    if c.samples_per_prompt < 2:
        bad("samples_per_prompt", "a pair needs at least 2 samples of a prompt")
    if c.eval_prompts < 0 or c.min_gap < 0:
        bad("eval_prompts" if c.eval_prompts < 0 else "min_gap", "must not be negative")
    if c.temperature == 0:
        bad("temperature", "greedy sampling gives K identical samples of a prompt, so no pairs; use a temperature > 0")
    if is_feedback_loss(c.loss):
        bad("loss", "kto trains on thumbs-up/down examples; iterate makes pairs: use a pair loss")
    if c.online:
        check_online(c, bad)
    if (c.judge or "").partition(":")[0] == "human":
        check_human(c, bad)


def check_human(c: IterateConfig, bad) -> None:
    """People judge a round at a time in `dpokit label` and give choices, not scores (judges/human.py)."""
    if c.online:
        bad("online", "a human judge (human:PROJECT) judges whole rounds in `dpokit label`, not a batch every step: "
                      "drop --online")
    if c.pairing == "random-pair":
        bad("pairing", "with a human judge a prompt's samples are ranked together: use best-vs-worst or all-pairs")
    if c.min_gap:
        bad("min_gap", "a human judge gives choices, not scores, so there is no gap: drop --min-gap")


def check_online(c: IterateConfig, bad) -> None:
    """--online counts optimizer steps, each on its own fresh pairs, against the starting model."""
    if c.max_steps is None:
        bad("max_steps", "--online needs --max-steps N: the optimizer steps, each on a freshly sampled and judged "
                         "batch")
    if c.rounds != 3:  # the default: --online has no rounds
        bad("rounds", "--online counts optimizer steps (--max-steps), not rounds; drop --rounds")
    if c.accumulate:
        bad("accumulate", "--online trains each step on its own fresh pairs; drop --accumulate")
    if c.reference == "previous":
        bad("reference", "--online moves the policy every step; its reference is the starting model: drop "
                         "--reference previous")
    if c.early_stop:
        bad("early_stop", "--online has no held-out pairs to stop on (its held-out figures are the judge's); drop "
                          "--early-stop")


@dataclass(frozen=True)
class PipelineConfig:
    """`dpokit pipeline`: SFT then DPO. Its config file is the recipe (recipes/*.yaml): these keys at the top, the
    stages' own keys under sft: and dpo:."""

    NOT_FLAGS: ClassVar[tuple[str, ...]] = ("sft", "dpo")  # whole stages: in the recipe file only

    model: str = opt(EMBEDDED_MODEL, "the starting model (SFT starts from it; DPO from the SFT result, which is also "
                                     "its reference unless dpo: sets ref)")
    output: str = opt("runs/pipeline", "pipeline folder: the stages write OUTPUT/sft and OUTPUT/dpo")
    sft: Optional[dict] = opt(None, "keys of dpokit sft; without data, SFT trains on the DPO set's chosen answers "
                                    "(Preferred-FT)")
    dpo: Optional[dict] = opt(None, "keys of dpokit dpo")
    overwrite: bool = opt(False, "replace the stages' folders if in use")
    resume: bool = opt(False, "keep finished stages, continue an unfinished one from its checkpoint")

    def __post_init__(self):
        if self.overwrite and self.resume:
            raise UserError("config: resume: --resume continues a pipeline and --overwrite deletes it; pick one")


def check_train_config(c: TrainConfig) -> None:
    def bad(key: str, why: str):
        raise UserError(f"config: {key}: {why}")

    for f in dataclasses.fields(c):
        value = getattr(c, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            bad(f.name, f"must be a finite number, got {value}")
    parse_columns(c.columns, "config: columns")  # a bad mapping fails here, before any file is read
    if c.pairs not in PAIRING:
        bad("pairs", f"unknown policy {c.pairs!r}; choose one of {', '.join(PAIRING)}")
    if c.batch_size < 1 or c.grad_accum < 1 or c.batch_size % c.grad_accum:
        bad("batch_size", f"{c.batch_size} examples per step must split into grad_accum={c.grad_accum} equal micro-batches")
    if c.max_prompt_length is not None and c.max_prompt_length < 1:
        bad("max_prompt_length", f"{c.max_prompt_length} leaves no prompt; give at least 1 (or leave it unset)")
    if c.max_prompt_length is not None and c.max_prompt_length >= c.max_length:
        bad("max_prompt_length", f"{c.max_prompt_length} must be below max_length={c.max_length} to leave room for answers")
    if c.max_steps is not None and c.max_steps < 1:
        bad("max_steps", "must be ≥ 1")
    if c.epochs <= 0:
        bad("epochs", "must be > 0")
    if c.eval_fraction is not None and not 0 <= c.eval_fraction < 1:
        bad("eval_fraction", "must be in [0, 1)")
    if c.eval_data and c.eval_fraction is not None:
        bad("eval_fraction", "give either --eval-data or --eval-fraction, not both")
    if c.resume and c.overwrite:
        bad("resume", "--resume continues a run and --overwrite deletes it; pick one")
    if c.mixed_precision != "no" and c.dtype in ("bfloat16", "float16"):
        bad("mixed_precision", "autocast needs float32 weights; use --dtype float32 with it, or drop it")
    if c.keep_checkpoints < 1:
        bad("keep_checkpoints", "must be ≥ 1 (the newest checkpoint is what --resume needs)")
    if c.learning_rate <= 0:
        bad("learning_rate", "must be > 0")
    if c.early_stop and not c.eval_every:
        bad("early_stop", "needs held-out evaluations during training: add --eval-every N")
    if c.early_stop and c.eval_fraction == 0 and not c.eval_data:
        bad("early_stop", "needs held-out data: drop --eval-fraction 0 or give --eval-data")
    if c.patience < 1:
        bad("patience", "must be ≥ 1")
    if c.lora_r < 0:
        bad("lora_r", "must be ≥ 0 (0 = no LoRA)")
    if not 0 <= c.lora_dropout < 1:
        bad("lora_dropout", "must be in [0, 1)")
    if c.load_in_4bit and not c.lora_r:
        bad("load_in_4bit", "QLoRA trains adapters on a frozen 4-bit base; add --lora-r (e.g. 16)")
    if getattr(c, "tokens_per_row", None) is not None and not (getattr(c, "layout", None) == "packed"
                                                                or getattr(c, "packing", False)):
        bad("tokens_per_row", "only packed rows use it; add --layout packed (dpo) or --packing (sft), or drop it")
    if c.attention == "flash_attention_2" and getattr(c, "packing", False):
        bad("attention", "flash_attention_2 takes no custom mask, and packed rows need one; drop --packing or use sdpa")


def check_dpo_config(c: DPOConfig) -> None:
    def bad(key: str, why: str):
        raise UserError(f"config: {key}: {why}")

    try:
        terms = loss_terms(c.loss, c.loss_weights)
    except ValueError as e:
        bad("loss_weights" if "loss_weights" in str(e) else "loss", str(e))
    names = [name for name, _ in terms]
    if c.beta <= 0:
        bad("beta", f"must be > 0, got {c.beta}")
    if c.label_smoothing and not any(LOSSES[n].uses_label_smoothing for n in names):
        bad("label_smoothing", f"the {c.loss!r} loss does not use it; use --loss cdpo, robust or simpo, or drop it")
    if not 0 <= c.label_smoothing < 0.5:
        bad("label_smoothing", f"must be in [0, 0.5), got {c.label_smoothing}")
    for key, loss, default in (("odpo_alpha", "odpo", 1.0), ("gamma", "simpo", 0.5), ("orpo_lambda", "orpo", 0.1),
                               ("desirable_weight", "kto", 1.0), ("undesirable_weight", "kto", 1.0)):
        if loss not in names and getattr(c, key) != default:
            bad(key, f"only the {loss} loss uses it")
    if c.desirable_weight <= 0 or c.undesirable_weight <= 0:
        bad("desirable_weight", "kto's weights must be > 0")
    if c.orpo_lambda <= 0:
        bad("orpo_lambda", f"must be > 0, got {c.orpo_lambda}")
    if c.sft_weight and "sft" in names:
        bad("sft_weight", "the sft term is already in --loss; give its weight in --loss-weights instead")
    if not needs_reference(c.loss):
        if c.ref:
            bad("ref", f"{c.loss} needs no reference model; drop --ref")
        if c.reference_cache == "off":
            bad("reference_cache", f"{c.loss} needs no reference, live or cached; drop --reference-cache")
    if c.attention == "flash_attention_2" and c.layout != "padded":
        bad("attention", f"flash_attention_2 takes no custom mask, and the {c.layout} layout needs one (rejected must "
                         "not see chosen); use --layout padded with it, or --attention sdpa")


def _field_type(cls, f) -> type:
    hint = get_type_hints(cls)[f.name]
    args = getattr(hint, "__args__", None)
    return next(a for a in args if a is not type(None)) if args else hint


def read_yaml(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"config file {path!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except (yaml.YAMLError, ValueError) as e:  # ValueError: e.g. an integer too long to convert
        raise UserError(f"{path}: invalid YAML ({str(e).splitlines()[0]})") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: a config file must be a mapping of keys to values")
    bad_keys = [k for k in data if not isinstance(k, str)]
    if bad_keys:
        raise UserError(f"{path}: key {bad_keys[0]!r} is not a name; keys are setting names such as beta")
    return {k.replace("-", "_"): v for k, v in data.items()}


def build_config(cls, values: dict[str, Any], source: str = "config"):
    """Make ``cls`` from a dict, naming unknown keys and wrongly typed values."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise UserError(f"{source}: unknown key {unknown[0]!r}; known keys: {', '.join(fields)}")
    missing = [f for f in fields.values() if f.metadata.get("required") and values.get(f.name) is None]
    if missing:
        f = missing[0]
        named = f.name.upper() if f.metadata.get("positional") else "--" + f.name.replace("_", "-")
        raise UserError(f"{named} is required (or `{f.name}:` in a --config file)")
    clean = {}
    for key, value in values.items():
        typ = _field_type(cls, fields[key])
        if fields[key].metadata.get("mapping") and isinstance(value, dict):  # YAML `columns: {prompt: question}`
            value = parse_columns(value, f"{source}: {key}").spec
        if fields[key].metadata.get("listing") and isinstance(value, list):  # YAML `loss: [sigmoid, sft]`
            value = ",".join(map(str, value))
        if value is None or isinstance(value, typ) and not (typ is int and isinstance(value, bool)):
            clean[key] = value
        elif typ is float and isinstance(value, int) and not isinstance(value, bool):
            clean[key] = float(value)
        else:
            raise UserError(f"{source}: {key} must be {typ.__name__}, got {value!r}")
    return cls(**clean)


def add_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """One flag per field: --learning-rate for learning_rate (a positional argument where the field says so, older
    spellings as aliases). Defaults are left out of the parser so we know what was set; help shows each once."""
    parser.add_argument("--config", help="YAML file with any of the keys below (flags given here win)")
    for f in dataclasses.fields(cls):
        if f.name in getattr(cls, "NOT_FLAGS", ()):
            continue
        typ = _field_type(cls, f)
        help_text = f.metadata["help"]
        if f.metadata.get("required"):
            help_text += " (required)"
        elif "default" not in help_text:  # a help that explains its own default says it once
            help_text += f" (default: {f.default})"
        help_text = help_text.replace("%", "%%")  # argparse %-formats help
        if f.metadata.get("positional"):
            parser.add_argument(f.name, nargs="?", default=None, help=help_text, metavar=f.name.upper())
            continue
        flags = ["--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ())]
        if typ is bool:
            parser.add_argument(*flags, dest=f.name, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(*flags, dest=f.name, type=typ, default=None, help=help_text,
                                choices=f.metadata.get("choices"), metavar=f.name.upper())


def config_from_args(cls, args: argparse.Namespace):
    values = read_yaml(args.config) if getattr(args, "config", None) else {}
    source = args.config or "config"
    for f in dataclasses.fields(cls):
        given = getattr(args, f.name, None)
        if given is not None:
            values[f.name] = given
    return build_config(cls, values, source)


def dump_config(config, path: Path) -> None:
    path.write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
