"""`dpokit plan`: the planner's report as text, and its command-line flags (the arithmetic is in plan.py)."""
from __future__ import annotations

import dataclasses

from .plan import (BYTES, FIT_FRACTION, GB, ZERO_CHOICES, ModelShape, Plan, PlanSettings, alternatives, check_settings,
                   make_plan, model_shape, row_tokens)


def human(n: float) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(int(n))


def flops(n: float) -> str:
    for unit, size in (("EFLOP", 1e18), ("PFLOP", 1e15), ("TFLOP", 1e12), ("GFLOP", 1e9)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n:.0f} FLOP"


def duration(seconds: float) -> str:
    return f"{seconds:.2f} s" if seconds < 120 else f"{seconds / 60:.1f} min" if seconds < 7200 else \
        f"{seconds / 3600:.1f} h"


def describe(plan: Plan) -> str:
    s, m = plan.settings, plan.shape
    tied = "tied" if m.tied else "untied"
    lines = [f"model {m.name}: {human(m.params)} parameters ({m.layers} layers, hidden {m.hidden}, MLP "
             f"{m.intermediate}, {m.heads} query / {m.kv_heads} key-value heads of {m.head_dim}, vocabulary {m.vocab}, "
             f"{tied} embeddings)"]
    if s.lora:
        lines.append(f"LoRA r={s.lora_r} on {s.lora_targets}: {human(m.lora_params)} trainable parameters "
                     f"({100 * m.lora_params / m.params:.2f}%, counted by {m.lora_counted})")
    sharding = {"0": "DDP (replicated)", "2": "DeepSpeed ZeRO-2", "3": "DeepSpeed ZeRO-3", "fsdp": "FSDP full shard"}
    precision = f"mixed {s.mixed_precision} over float32" if s.mixed_precision != "no" else s.dtype
    tokens_pair, answers_pair = row_tokens(s)
    lines.append(f"{s.gpus} × {s.gpu_mem_gb:g} GB, {sharding[s.zero]}, {precision}; {s.batch_size} pairs/step = "
                 f"{s.micro_pairs} per device × {s.grad_accum} micro-batches × {s.gpus} devices; "
                 f"{tokens_pair} tokens per pair ({s.layout} layout, max_length {s.max_length}, prompt "
                 f"{s.prompt_length}); checkpointing {'on' if s.gradient_checkpointing else 'off'}; reference "
                 f"{reference_kind(s)}; LM head {'full' if s.full_logits else 'lean'}")
    lines.append("")
    lines.append("| per device | GB |")
    lines.append("|---|---:|")
    for name, value in plan.parts.items():
        lines.append(f"| {name} | {value / GB:.2f} |")
    lines.append(f"| **total** | **{plan.total / GB:.2f}** |")
    verdict = "FITS" if plan.fits else "DOES NOT FIT"
    lines.append(f"{verdict}: {plan.total / GB:.1f} GB of {s.gpu_mem_gb:g} GB (fit = at most {FIT_FRACTION:.0%})")
    lines += [f"note: {n}" for n in plan.notes]
    lines.append(f"step: {flops(plan.step_flops)} for {plan.tokens_per_step} tokens → {duration(plan.step_seconds)} "
                 f"at {s.utilization:.0%} of {s.tflops:g} TFLOP/s × {s.gpus}")
    if plan.reference_pass_flops:
        per_pair = plan.reference_pass_flops / (s.gpus * s.tflops * 1e12 * s.utilization)
        lines.append(f"reference cache: computed once before training, {per_pair * 1000:.2f} ms per pair")
    return "\n".join(lines)


def reference_kind(s: PlanSettings) -> str:
    if not s.uses_reference:
        return f"none ({s.loss} is reference-free)"
    return "adapters off" if s.lora else "cached" if s.reference_cache == "on" else "live"


def report(shape: ModelShape, s: PlanSettings) -> tuple[str, Plan]:
    plan = make_plan(shape, s)
    text = describe(plan)
    if not plan.fits:
        options = alternatives(shape, s)
        if options:
            text += "\n\nsettings that fit:\n" + "\n".join(
                f"  {label}: {p.total / GB:.1f} GB per device, step {duration(p.step_seconds)}" for label, p in options)
        else:
            text += "\n\nnothing tried fits; use more or larger devices, or a shorter --max-length"
    return text, plan


def settings_from_args(args) -> PlanSettings:
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PlanSettings)
              if getattr(args, f.name, None) is not None}
    if "dtype" not in values and values.get("mixed_precision", "no") != "no":
        values["dtype"] = "float32"
    if args.cpu:
        values.update(device="cpu", gpus=1)
        values.setdefault("dtype", "float32")
    if "prompt_length" not in values:
        values["prompt_length"] = values.get("max_length", PlanSettings.max_length) // 2
    return PlanSettings(**values)


def plan_command(args) -> int:
    settings = settings_from_args(args)
    check_settings(settings)
    # LoRA is counted even when not asked for, so that a run that does not fit can be offered it.
    shape = model_shape(args.model, lora_r=settings.lora_r, lora_targets=settings.lora_targets)
    text, _ = report(shape, settings)
    print(text)
    return 0


def add_plan_arguments(p) -> None:
    d = PlanSettings()
    p.add_argument("--model", required=True, help="model folder, its config.json, a .gguf file, or the embedded name")
    p.add_argument("--gpus", type=int, help=f"devices (default {d.gpus})")
    p.add_argument("--gpu-mem", dest="gpu_mem_gb", type=float, help=f"GB per device (default {d.gpu_mem_gb:g})")
    p.add_argument("--cpu", action="store_true", help="plan a one-process CPU run (--gpu-mem = RAM)")
    p.add_argument("--lora", action="store_true", default=None, help="train LoRA adapters (reference = adapters off)")
    p.add_argument("--lora-r", type=int, help=f"LoRA rank (default {d.lora_r})")
    p.add_argument("--lora-targets", help="comma-separated module names or all-linear (default; LM head excluded)")
    p.add_argument("--batch-size", type=int, help=f"pairs per optimizer step over all devices (default {d.batch_size})")
    p.add_argument("--grad-accum", type=int, help=f"micro-batches per step (default {d.grad_accum})")
    p.add_argument("--max-length", type=int, help=f"max tokens of prompt + answer (default {d.max_length})")
    p.add_argument("--prompt-length", type=int, help="prompt tokens of a longest pair (default max-length / 2)")
    p.add_argument("--dtype", choices=tuple(BYTES), help=f"weight dtype (default {d.dtype})")
    p.add_argument("--mixed-precision", choices=("no", "bf16", "fp16"), help="autocast over float32 weights")
    p.add_argument("--gradient-checkpointing", action="store_true", default=None)
    p.add_argument("--reference-cache", choices=("on", "off"), help="on (default): cached log-probs; off: live model")
    p.add_argument("--loss", help="the run's --loss (default sigmoid); simpo and orpo need no reference at all")
    p.add_argument("--zero", choices=ZERO_CHOICES, help="0 = DDP, 2/3 = DeepSpeed ZeRO stage, fsdp = FSDP full shard")
    p.add_argument("--layout", choices=("shared", "packed", "padded"), help=f"batch layout (default {d.layout})")
    p.add_argument("--full-logits", action="store_true", default=None, help="logits at every position (not lean)")
    p.add_argument("--attention", choices=("sdpa", "eager"), help="eager keeps the attention scores for backward")
    p.add_argument("--cpu-malloc", choices=("glibc", "lean"), help="with --cpu: the run's allocator policy (default glibc)")
    p.add_argument("--utilization", type=float, help=f"share of peak FLOP/s reached (default {d.utilization})")
    p.add_argument("--tflops", type=float, help=f"peak TFLOP/s per device (default {d.tflops:g}: H100 SXM bf16 dense)")

