"""Up-front memory estimate: will this run fit? Checked before any weights are loaded.

The numbers are `dpokit plan`'s (plan.estimate_memory, held against measured peak RSS), at the settings
`dpokit dpo` hands this check and, for those it does not, the most costly ones: padded rows at the longest allowed
length, full (tokens × vocabulary) logits, no gradient checkpointing, glibc's CPU runtime. Counts, in bytes: policy
weights, gradients and AdamW's two moments (all in the training dtype), the reference copy, and the activations of
one micro-batch (every layer's inputs and MLP intermediates for backward, plus the LM head's float32 logits, their
log-softmax and gradient). It errs on the high side. The formula, its per-layer activation count and byte sizes live
in plan.py; this module asks it and checks the answer against the memory the machine has.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError
from .plan import BYTES, RUNTIME_CPU, PlanSettings, config_shape, estimate_memory


@dataclass
class MemoryEstimate:
    weights: int
    gradients: int
    optimizer: int
    reference: int
    activations: int
    runtime: int = RUNTIME_CPU

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.reference + self.activations + self.runtime

    def table(self) -> str:
        gb = lambda b: f"{b / 2**30:.2f} GB"  # noqa: E731
        parts = ("weights", "gradients", "optimizer", "reference", "activations", "runtime")
        return ", ".join(f"{p} {gb(getattr(self, p))}" for p in parts) + f"; total {gb(self.total)}"


def count_parameters(model_path: Path) -> tuple[int, object]:
    """(parameters, config) of a model folder, counted on the meta device."""

    config = _config(model_path)
    return config_shape(config, str(model_path)).params, config


def estimate(model_path: Path, *, dtype: str, micro_batch_pairs: int, max_length: int, separate_reference: bool,
             reference_path: Path | None = None) -> MemoryEstimate:
    """What `dpokit dpo` will hold at its peak, by the planner's formula (see the module docstring)."""

    shape = config_shape(_config(model_path), str(model_path))
    # What the prompt's share of max_length is does not matter to padded rows with full logits.
    settings = PlanSettings(device="cpu", batch_size=micro_batch_pairs, max_length=max_length, dtype=dtype,
                            layout="padded", full_logits=True,
                            reference_cache="off" if separate_reference else "on")
    parts, _ = estimate_memory(shape, settings)
    if separate_reference and reference_path is not None:  # a --ref model: the copy is of its own size
        parts["reference"] = count_parameters(reference_path)[0] * BYTES[dtype]
    return MemoryEstimate(weights=parts["weights"], gradients=parts["gradients"], optimizer=parts["optimizer"],
                          reference=parts["reference"], activations=parts["activations"] + parts["LM head"],
                          runtime=parts["runtime"])


def _config(model_path: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(model_path))


def available_bytes(device: str) -> int | None:
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.mem_get_info()[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def check_fits(est: MemoryEstimate, *, device: str, micro_batch_pairs: int, max_length: int) -> None:
    """Stop before loading if the estimate exceeds what is free, saying what would fit."""
    if os.environ.get("DPOKIT_SKIP_MEMORY_CHECK") == "1":
        return
    free = available_bytes(device)
    if free is None or est.total <= free:
        return
    fixed = est.total - est.activations
    hints = []
    if fixed < free:
        per_pair = est.activations / micro_batch_pairs
        fits_pairs = int((free - fixed) // per_pair)
        if fits_pairs >= 1:
            hints.append(f"--grad-accum so that at most {fits_pairs} pairs go through at once")
        hints.append(f"a shorter --max-length (now {max_length})")
    hints += ["a smaller model or LoRA", "--ref on a cached reference (planned)"]
    raise UserError(f"this run needs about {est.total / 2**30:.1f} GB but {free / 2**30:.1f} GB is free on {device} "
                    f"({est.table()}); try " + ", or ".join(hints) + " (or set DPOKIT_SKIP_MEMORY_CHECK=1 to try anyway)")
