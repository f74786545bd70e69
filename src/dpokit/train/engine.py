"""The few places where the distributed engine under accelerate (DDP, DeepSpeed ZeRO, FSDP) changes what we do.

dpokit's own settings win over the launch file's: precision, gradient accumulation, clipping and the micro-batch
size are dpokit flags, and are written into the engine's config before `accelerator.prepare`.
"""
from __future__ import annotations

import os

import torch

from ..errors import UserError

SHARDED_STATE = "sharded"  # checkpoint sub-folder written by accelerator.save_state under DeepSpeed / FSDP


def deepspeed_launch() -> bool:
    """True in a process started by `accelerate launch` with a DeepSpeed config."""
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true" and "LOCAL_RANK" in os.environ


def make_accelerator(config):
    """One Accelerator per run: forget a previous run's precision in this process (the process group is kept)."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState
    from accelerate.utils import DistributedDataParallelKwargs, GradientAccumulationPlugin, InitProcessGroupKwargs

    AcceleratorState._reset_state(reset_partial_state=False)
    # DDP: gradients live in its all-reduce buckets instead of beside them (one copy of the gradients less)
    cpu, handlers = not torch.cuda.is_available(), [DistributedDataParallelKwargs(gradient_as_bucket_view=True)]
    if cpu and deepspeed_launch():
        # accelerate starts DeepSpeed only when not told cpu=True; DeepSpeed's CPU accelerator then talks gloo, and
        # accelerate counts the processes only when it is given that backend by name.
        cpu, handlers = False, [InitProcessGroupKwargs(backend="gloo")]  # (DDP's settings do not apply)
    # The plugin, not gradient_accumulation_steps=: the latter is overridden by the launcher's environment.
    accumulation = GradientAccumulationPlugin(num_steps=config.grad_accum, sync_with_dataloader=False)
    accelerator = Accelerator(cpu=cpu, mixed_precision=config.mixed_precision,
                              gradient_accumulation_plugin=accumulation, kwargs_handlers=handlers)
    if is_deepspeed(accelerator) and accelerator.state.deepspeed_plugin.zero_stage == 3:
        load_whole_under_zero3(accelerator.state.deepspeed_plugin)
    return accelerator


def load_whole_under_zero3(plugin) -> None:
    """ZeRO-3: every process loads the model whole and DeepSpeed partitions it in `prepare`.

    The reference pass and a live reference need the whole model before training starts. accelerate 1.15 tells
    transformers about any ZeRO-3 config, and transformers then builds every model (even on the meta device, for
    the memory estimate) partitioned, whatever zero3_init_flag says; so dpokit withdraws that notice here."""
    from transformers.integrations import unset_hf_deepspeed_config

    if plugin.zero3_init_flag:
        raise UserError("zero3_init_flag (--zero3_init_flag true, or zero3_init_flag: true in the accelerate config) is "
                        "not supported: dpokit loads the model whole on every process and DeepSpeed partitions it when "
                        "training starts; set it to false")
    unset_hf_deepspeed_config()


def is_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def is_sharded(accelerator) -> bool:
    """Optimizer state (and perhaps weights) split over processes: checkpoints go through accelerator.save_state."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP)


def weights_sharded(accelerator) -> bool:
    """No process holds every weight (ZeRO-3, FSDP): saving a model needs a gather over all processes."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type == DistributedType.FSDP:
        return True
    return is_deepspeed(accelerator) and accelerator.state.deepspeed_plugin.zero_stage == 3


def describe(accelerator) -> str:
    """The engine a run used, for summary.json: one process, ddp, deepspeed zero-N, or fsdp."""
    from accelerate.utils import DistributedType

    if is_deepspeed(accelerator):
        return f"deepspeed zero-{accelerator.state.deepspeed_plugin.zero_stage}"
    if accelerator.distributed_type == DistributedType.FSDP:
        return "fsdp"
    return "ddp" if accelerator.num_processes > 1 else "one process"


def check_config(config) -> None:
    """Settings the DeepSpeed engine cannot honour, refused before any weights load."""
    if not deepspeed_launch():
        return
    if config.skip_nonfinite:
        raise UserError("--skip-nonfinite does not work under DeepSpeed: its engine steps inside backward, before "
                        "dpokit sees the gradient norm; drop the flag (a non-finite step stops the run)")
    if config.mixed_precision == "no" and (config.dtype or "float32") != "float32":
        raise UserError(f"--dtype {config.dtype} under DeepSpeed needs --mixed-precision bf16 (or fp16): DeepSpeed "
                        "keeps float32 master weights only in its mixed-precision modes")


def run_dtype(config) -> str | None:
    """Under DeepSpeed the weights load in float32 unless asked (its bf16 mode casts them and keeps fp32 masters)."""
    if deepspeed_launch() and config.dtype is None:
        return "float32"
    return None


def configure(accelerator, config, micro_per_process: int) -> None:
    """Before prepare: write dpokit's batch, accumulation, clipping and precision into DeepSpeed's config."""
    if not is_deepspeed(accelerator):
        return
    ds = accelerator.state.deepspeed_plugin.deepspeed_config
    ds["train_micro_batch_size_per_gpu"] = micro_per_process  # no dataloader is prepared for accelerate to read it from
    ds["gradient_accumulation_steps"] = config.grad_accum
    ds["train_batch_size"] = micro_per_process * config.grad_accum * accelerator.num_processes
    ds["gradient_clipping"] = float(config.max_grad_norm or 0.0)  # 0: DeepSpeed does not clip
    ds["bf16"] = {**ds.get("bf16", {}), "enabled": config.mixed_precision == "bf16"}
    ds["fp16"] = {**ds.get("fp16", {}), "enabled": config.mixed_precision == "fp16"}
    ds.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = True  # final/ needs them


def after_prepare(accelerator, module) -> None:
    """ZeRO-3 gathers a layer's weights around that layer's own forward; the lean LM head reads the head's weight
    from the wrapper's forward instead (logprobs.HeadLogProbs), so DeepSpeed is told to gather it there too."""
    if not (is_deepspeed(accelerator) and weights_sharded(accelerator)):
        return
    import deepspeed

    wrapper = accelerator.unwrap_model(module)  # PairLogpsModule / SequenceLogpsModule
    head = wrapper.model.get_output_embeddings()
    if head is not None:
        deepspeed.zero.register_external_parameter(wrapper, head.weight)


def model_state_dict(accelerator, module) -> dict | None:
    """The whole model's weights, gathered, where no process holds them all (None elsewhere: use the model itself).

    Every process must call this (it is a collective); the main process gets the weights."""
    if not weights_sharded(accelerator):
        return None
    state = accelerator.get_state_dict(module)  # of the PairLogpsModule / SequenceLogpsModule wrapper
    return {name.removeprefix("model."): tensor for name, tensor in (state or {}).items()}
