"""`dpokit plan`: will a DPO run fit on N devices, and how long will a step take? No weights are loaded.

The model is built on the `meta` device from its config (a folder, a config.json, or the embedded name), so every
parameter is counted exactly, tied embeddings once; LoRA parameters are counted by attaching peft to the meta model.

Memory per device, in bytes (P all parameters, T trainable ones, N devices, s bytes per stored parameter):
- weights P·s (LoRA: the frozen base P·s plus the fp32 adapters), gradients T·s, AdamW moments 2·T·s: torch's
  AdamW keeps its moments in the parameter dtype, so `--dtype bfloat16` means bf16 moments and no fp32 master copy;
  `--mixed-precision bf16` keeps fp32 weights (the master copy) and moments and autocasts the matmuls, whose bf16
  weight copies autocast caches for the whole forward (P·2 more). DeepSpeed ZeRO keeps its own fp32 master weights
  and moments (12 bytes per trainable parameter) plus 16-bit weights and gradients (Rajbhandari et al. 2020).
- sharding: ZeRO-2 splits gradients and optimizer states over N; ZeRO-3 and FSDP (full shard) split the weights too
  and gather one decoder layer at a time (two with prefetch) plus the root unit (embeddings, LM head) while it runs.
- reference: with `--reference-cache on` (the default) only a table of log-probs (no model) during training; with
  `off`, a second full copy (P·s) on every device: dpokit moves the live reference whole to each process and does
  not shard it. With LoRA the reference is the base with adapters disabled: no copy.
- activations of one micro-batch (see `layer_activation_elements`): every layer keeps 10·h + 4·I elements
  per token without checkpointing; with it, each layer keeps its input (h) and one layer at a time is recomputed.
  The shared/packed layouts' (T × T) attention mask per row comes on top.
- LM head: the lean path (default) makes logits only at answer positions, 1024 rows at a time: 3 chunks of
  (1024 × V) float32 live at once (logits, probabilities, their gradient); `--full-logits` keeps 3 × (tokens × V)
  float32 (as `memory.estimate`).
A run "fits" when the total is at most 90% of the device's memory (the rest: allocator fragmentation, NCCL buffers).
`dpokit dpo`'s check before loading (`memory.estimate`) counts with this same formula.

Step time: FLOPs of one optimizer step over all devices at `--utilization` of `--tflops` per device. A forward is
2 FLOPs per parameter per token (the input embedding is a lookup: no FLOPs; the LM head only at answer positions on
the lean path) plus causal attention 2·layers·(heads × head size)·row length per token. Full training is 3 forwards
(forward, backward for inputs and for weights); LoRA 2 (no weight gradients for the frozen base); gradient
checkpointing adds a forward; a live reference adds a forward (cached: one forward per pair, once, before training).
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .errors import UserError

BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
# Python, torch, tokenizer, data, and glibc's heap fragments: calibrated on CPU runs (docs/scale.md).
RUNTIME_CPU = 600 * 2**20
# With --cpu-malloc lean there are no heap fragments left to cover: Python with torch, transformers and the model
# code imported, before any weight loads, measured at 408-420 MB on SmolLM2 runs.
RUNTIME_CPU_LEAN = 420 * 2**20


def layer_activation_elements(hidden: int, intermediate: int) -> int:
    """Elements one decoder layer keeps for backward, per token (Llama-style: RMSNorm, attention, gated MLP).

    10·h: the two norms' inputs, their float32 upcasts and normalised outputs, the query and the attention output;
    4·I: the MLP's gate and up projections, the activated gate and the product fed to the down projection. Key and
    value (2 × kv heads × head size ≤ 2·h) fit inside the generous norm count. For a GPT layer with a 4·h MLP this is
    26·h elements, against Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large Transformer Models",
    eq. 1) 34·h bytes = 17·h 16-bit elements with flash attention and dropout masks: ours errs on the high side.
    """
    return 10 * hidden + 4 * intermediate

GB = 2**30
CHUNK_ROWS = 1024  # dpokit.logprobs.CHUNK_ROWS: answer positions per LM-head chunk
RUNTIME_GPU = 1 * GB  # CUDA context, kernels, NCCL, the Python process's own tensors
FIT_FRACTION = 0.9
ZERO_CHOICES = ("0", "2", "3", "fsdp")


@dataclass(frozen=True)
class ModelShape:
    """What the planner needs to know about a model, counted on the meta device."""

    name: str
    params: int  # every parameter once (a tied embedding / LM head counted once)
    embedding: int
    head: int  # parameters of the LM head matrix (the same tensor as the embedding when tied)
    tied: bool
    layers: int
    hidden: int
    intermediate: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    layer_params: int  # one decoder layer
    lora_params: int = 0  # trainable adapter parameters at the planned rank (0 without LoRA)
    lora_counted: str = ""  # "peft" (exact) or "formula" (r × (in + out) per targeted linear)


@dataclass(frozen=True)
class PlanSettings:
    gpus: int = 1
    gpu_mem_gb: float = 80.0
    device: str = "gpu"  # or "cpu": one process, RAM, Python runtime as measured on CPU
    lora: bool = False
    lora_r: int = 16
    lora_targets: str = "all-linear"
    batch_size: int = 32  # pairs per optimizer step, over all devices
    grad_accum: int = 1
    max_length: int = 1024
    prompt_length: int = 512  # prompt tokens of a pair at the longest allowed length
    dtype: str = "bfloat16"
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    reference_cache: str = "on"
    loss: str = "sigmoid"  # a reference-free loss (simpo, orpo) has no reference: no copy, no pass, no cache
    zero: str = "0"
    layout: str = "shared"
    full_logits: bool = False
    attention: str = "sdpa"  # eager also keeps (heads × T) scores per token per layer
    cpu_malloc: str = "glibc"  # CPU runs: glibc's heap fragments are part of the runtime unless the lean policy is on
    utilization: float = 0.4
    tflops: float = 989.0  # H100 SXM dense bf16 peak

    @property
    def uses_reference(self) -> bool:
        from .losses import needs_reference

        return needs_reference(self.loss)

    @property
    def micro_pairs(self) -> int:
        return self.batch_size // (self.grad_accum * self.gpus)


def check_settings(s: PlanSettings) -> None:
    def bad(key, why):
        raise UserError(f"plan: {key}: {why}")

    if s.gpus < 1:
        bad("gpus", "must be ≥ 1")
    if s.batch_size < 1 or s.grad_accum < 1 or s.batch_size % (s.grad_accum * s.gpus):
        bad("batch_size", f"{s.batch_size} pairs per step must split into grad_accum={s.grad_accum} micro-batches "
                          f"over {s.gpus} devices; make it a multiple of {s.grad_accum * s.gpus}")
    if not 0 < s.prompt_length < s.max_length:
        bad("prompt_length", f"must be between 1 and max_length - 1 ({s.max_length - 1})")
    if s.zero not in ZERO_CHOICES:
        bad("zero", f"choose one of {', '.join(ZERO_CHOICES)}")
    if s.mixed_precision != "no" and s.dtype != "float32":
        bad("mixed_precision", "autocast needs float32 weights (as in dpokit dpo); use --dtype float32 with it")
    if not 0 < s.utilization <= 1:
        bad("utilization", "must be in (0, 1]")
    from .losses import loss_terms

    try:
        loss_terms(s.loss)
    except ValueError as e:
        bad("loss", str(e))


# --- the model, counted on the meta device -------------------------------------------------------------------

def load_config(spec: str):
    """A transformers config from a model folder, a config.json file, a .gguf file or the embedded name."""
    from transformers import AutoConfig

    from .models import EMBEDDED_MODEL, resolve_model_path

    path = Path(spec).expanduser()
    if spec == EMBEDDED_MODEL or path.suffix == ".gguf":
        path = resolve_model_path(spec)
    elif not path.exists():
        raise UserError(f"plan: --model {spec!r} does not exist (give a model folder, its config.json, a .gguf file "
                        f"or {EMBEDDED_MODEL!r})")
    elif path.is_dir() and not (path / "config.json").is_file():
        raise UserError(f"plan: {spec!r} has no config.json")
    try:
        return AutoConfig.from_pretrained(str(path))
    except (ValueError, OSError) as e:
        raise UserError(f"plan: cannot read a model config from {spec!r}: {str(e).splitlines()[0]}") from None


def lora_formula(model, r: int, targets: str) -> int:
    """r × (in + out) for each targeted linear layer (all but the LM head for 'all-linear')."""
    wanted = None if targets == "all-linear" else {t.strip() for t in targets.split(",")}
    head = model.get_output_embeddings()
    return sum(r * (m.in_features + m.out_features) for name, m in model.named_modules()
               if isinstance(m, torch.nn.Linear) and m is not head
               and (wanted is None or name.rsplit(".", 1)[-1] in wanted))


def count_lora(model, r: int, targets: str) -> tuple[int, str]:
    try:
        from peft import LoraConfig, get_peft_model

        target = "all-linear" if targets == "all-linear" else [t.strip() for t in targets.split(",")]
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            peft_model = get_peft_model(model, LoraConfig(r=r, lora_alpha=r, target_modules=target,
                                                          task_type="CAUSAL_LM"))
        return sum(p.numel() for n, p in peft_model.named_parameters() if "lora_" in n), "peft"
    except Exception:  # peft missing or the architecture unknown to it: the same count by formula
        return lora_formula(model, r, targets), "formula"


def decoder_layer_params(model, layers: int) -> int:
    """Parameters of one decoder layer: the first ModuleList of `layers` blocks (model.layers, transformer.h)."""
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == layers:
            return sum(p.numel() for p in module[0].parameters())
    return sum(p.numel() for p in model.parameters()) // layers


def model_shape(spec: str, *, lora_r: int | None = None, lora_targets: str = "all-linear") -> ModelShape:
    return config_shape(load_config(spec), spec, lora_r=lora_r, lora_targets=lora_targets)


def config_shape(config, name: str, *, lora_r: int | None = None, lora_targets: str = "all-linear") -> ModelShape:
    """The ModelShape of a transformers config, its model built on the meta device."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    text = getattr(config, "text_config", config)
    embedding, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    heads = text.num_attention_heads
    layer_params = decoder_layer_params(model, text.num_hidden_layers)
    shape = ModelShape(
        name=name, params=sum(p.numel() for p in model.parameters()), embedding=embedding.numel(),
        head=head.numel(), tied=head is embedding, layers=text.num_hidden_layers, hidden=text.hidden_size,
        intermediate=getattr(text, "intermediate_size", 4 * text.hidden_size), heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", None) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads, vocab=text.vocab_size,
        layer_params=layer_params)
    if lora_r:
        count, how = count_lora(model, lora_r, lora_targets)
        shape = replace(shape, lora_params=count, lora_counted=how)
    return shape


# --- memory --------------------------------------------------------------------------------------------------

@dataclass
class Plan:
    shape: ModelShape
    settings: PlanSettings
    parts: dict[str, int] = field(default_factory=dict)  # bytes per device, in table order
    notes: list[str] = field(default_factory=list)
    step_flops: float = 0.0
    reference_pass_flops: float = 0.0  # once per pair, before training (cached reference)
    tokens_per_step: int = 0

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    @property
    def capacity(self) -> int:
        return int(self.settings.gpu_mem_gb * GB)

    @property
    def fits(self) -> bool:
        return self.total <= FIT_FRACTION * self.capacity

    @property
    def step_seconds(self) -> float:
        s = self.settings
        return self.step_flops / (s.gpus * s.tflops * 1e12 * s.utilization)


def row_tokens(s: PlanSettings) -> tuple[int, int]:
    """(tokens run through the model, answer positions) per pair at the longest allowed length."""
    answer = s.max_length - s.prompt_length
    if s.layout == "padded":
        return 2 * s.max_length, 2 * answer  # prompt+chosen and prompt+rejected rows
    return s.prompt_length + 2 * answer, 2 * answer  # one [prompt | chosen | rejected] row, prompt once


def estimate_memory(shape: ModelShape, s: PlanSettings) -> tuple[dict[str, int], list[str]]:
    n = s.gpus
    zero, deepspeed = s.zero, s.zero in ("2", "3")
    shard_weights = zero in ("3", "fsdp")
    shard_states = zero in ("2", "3", "fsdp")
    notes: list[str] = []
    stored = 4 if s.mixed_precision != "no" else BYTES[s.dtype]  # bytes per stored parameter
    act = 2 if s.mixed_precision != "no" else BYTES[s.dtype]  # bytes per activation element
    trainable = shape.lora_params if s.lora else shape.params
    train_bytes = 4 if s.lora else stored  # peft keeps adapters in float32 (autocast_adapter_dtype)
    parts: dict[str, int] = {}

    weights = shape.params * stored + (shape.lora_params * 4 if s.lora else 0)
    parts["weights"] = weights // n if shard_weights else weights
    if deepspeed and not s.lora:
        # ZeRO keeps its own fp32 master copy next to the module's weights, in float32 runs too (a clone)
        grads, optimizer = trainable * stored, trainable * 12
        notes.append("DeepSpeed: fp32 master weights and moments (12 bytes per trainable parameter)")
    else:
        grads, optimizer = trainable * train_bytes, 2 * trainable * train_bytes
    if deepspeed:
        notes.append("not counted: DeepSpeed's own buffers, and the parameters ZeRO-3 keeps gathered "
                     "(stage3_max_live_parameters); measured CPU peaks ran 15-37% above this plan (docs/scale.md)")
    parts["gradients"] = grads // n if shard_states else grads
    parts["optimizer"] = optimizer // n if shard_states else optimizer
    if s.mixed_precision != "no" and not shard_weights:
        parts["autocast copies"] = shape.params * 2
    if shard_weights:
        root = shape.embedding + (0 if shape.tied else shape.head)
        parts["gathered layers"] = (2 * shape.layer_params + root) * (2 if s.mixed_precision != "no" else stored)
    separate_ref = s.reference_cache == "off" and not s.lora and s.uses_reference
    parts["reference"] = shape.params * BYTES[s.dtype] if separate_ref else 0
    if separate_ref and shard_weights:
        notes.append("the live reference is a full copy on every device: dpokit does not shard it")

    tokens_pair, answers_pair = row_tokens(s)
    rows_pair = 2 if s.layout == "padded" else 1
    micro = s.micro_pairs
    tokens, answers, row = micro * tokens_pair, micro * answers_pair, tokens_pair // rows_pair
    per_token = layer_activation_elements(shape.hidden, shape.intermediate)
    if s.attention == "eager":
        per_token += 2 * shape.heads * row  # softmax output (float32 upcast) and its cast
    if s.gradient_checkpointing:
        # every layer keeps its input; one layer at a time is recomputed, and its activations' gradients live with it
        layer_acts = tokens * (shape.layers * shape.hidden + 2 * per_token) * act
    else:
        layer_acts = tokens * shape.layers * per_token * act
    mask = micro * rows_pair * row * row * act if s.layout != "padded" else 0
    parts["activations"] = layer_acts + mask
    if s.full_logits:
        parts["LM head"] = 3 * tokens * shape.vocab * 4
    else:
        parts["LM head"] = 3 * min(answers, CHUNK_ROWS) * shape.vocab * 4 + 2 * answers * shape.hidden * act
    parts["runtime"] = RUNTIME_GPU if s.device != "cpu" else RUNTIME_CPU_LEAN if s.cpu_malloc == "lean" else RUNTIME_CPU
    return parts, notes


def forward_flops_per_token(shape: ModelShape, row: int, answer_share: float, full_logits: bool) -> float:
    """2 per multiply-add: decoder matmuls, the LM head (only at answer positions on the lean path), attention."""
    head = shape.head * (1.0 if full_logits else answer_share)
    decoder = shape.params - shape.embedding - (0 if shape.tied else shape.head)
    attention = 2 * shape.layers * shape.heads * shape.head_dim * row  # causal: half of 4·row·d
    return 2 * (decoder + head) + attention


def make_plan(shape: ModelShape, s: PlanSettings) -> Plan:
    check_settings(s)
    parts, notes = estimate_memory(shape, s)
    tokens_pair, answers_pair = row_tokens(s)
    row = tokens_pair // (2 if s.layout == "padded" else 1)
    fwd = forward_flops_per_token(shape, row, answers_pair / tokens_pair, s.full_logits)
    passes = (2 if s.lora else 3) + (1 if s.gradient_checkpointing else 0)
    live = s.reference_cache == "off" and s.uses_reference
    tokens = s.batch_size * tokens_pair
    plan = Plan(shape, s, parts, notes, tokens_per_step=tokens)
    plan.step_flops = fwd * tokens * (passes + (1 if live else 0))
    plan.reference_pass_flops = fwd * tokens_pair if s.uses_reference and not live else 0.0
    return plan


# --- what would fit ------------------------------------------------------------------------------------------

def alternatives(shape: ModelShape, s: PlanSettings) -> list[tuple[str, Plan]]:
    """Plans that fit, changing as little as possible: full fine-tuning options before LoRA, at most four."""
    one_pair = max(1, s.batch_size // s.gpus)  # grad_accum giving one pair per device per micro-batch
    micro1 = {"grad_accum": one_pair} if s.batch_size % (one_pair * s.gpus) == 0 else {}
    lora = {"lora": True} if shape.lora_params else {}
    ladder = [
        ("--gradient-checkpointing", {"gradient_checkpointing": True}),
        ("one pair per micro-batch", micro1),
        ("--reference-cache on", {"reference_cache": "on"}),
        ("ZeRO-3 / FSDP", {"zero": "fsdp"}),
        ("FSDP + checkpointing", {"zero": "fsdp", "gradient_checkpointing": True}),
        ("FSDP + checkpointing + one pair per micro-batch", {"zero": "fsdp", "gradient_checkpointing": True, **micro1}),
        ("LoRA", lora),
        ("LoRA + checkpointing", {**lora, "gradient_checkpointing": True}),
        ("LoRA + checkpointing + one pair per micro-batch", {**lora, "gradient_checkpointing": True, **micro1}),
        ("LoRA + FSDP + checkpointing + one pair per micro-batch",
         {**lora, "zero": "fsdp", "gradient_checkpointing": True, **micro1}),
    ]
    found, seen = [], set()
    for label, change in ladder:
        if not change or all(getattr(s, k) == v for k, v in change.items()) or (s.gpus == 1 and "zero" in change):
            continue
        changed = replace(s, **change)
        if changed in seen:
            continue
        seen.add(changed)
        plan = make_plan(shape, changed)
        if plan.fits:
            found.append((label, plan))
    return found[:4]


# --- the report ----------------------------------------------------------------------------------------------
