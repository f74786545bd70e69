"""Every shipped accelerate config and recipe loads, names only keys its reader knows, and the recipe's plan holds."""
import dataclasses
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ACCELERATE = ROOT / "configs" / "accelerate"
RECIPE = ROOT / "recipes" / "zephyr-7b-lora.yaml"
MISTRAL = ROOT / "recipes" / "configs" / "mistral-7b-config.json"

EXPECTED = {"ddp.yaml": ("MULTI_GPU", None), "fsdp.yaml": ("FSDP", "fsdp_config"),
            "deepspeed_zero2.yaml": ("DEEPSPEED", "deepspeed_config"),
            "deepspeed_zero3.yaml": ("DEEPSPEED", "deepspeed_config")}


def launch_options() -> set[str]:
    """The option names `accelerate launch` accepts; nested config keys become these (fsdp_config.x → fsdp_x)."""
    from accelerate.commands.launch import launch_command_parser

    return {a.dest for a in launch_command_parser()._actions}


def test_every_shipped_accelerate_config_is_tested():
    assert sorted(p.name for p in ACCELERATE.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_accelerate_config_loads_with_accelerates_own_reader(name):
    from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file

    path = ACCELERATE / name
    config = load_config_from_file(str(path))  # raises on keys accelerate does not know
    assert isinstance(config, ClusterConfig)
    kind, section = EXPECTED[name]
    assert config.distributed_type.value == kind
    assert config.num_machines == 1 and config.use_cpu is False
    assert config.mixed_precision in ("no", "bf16")
    options = launch_options()
    if section:
        nested = getattr(config, section)
        assert nested, f"{name}: empty {section}"
        unknown = [k for k in nested if k not in options]
        assert not unknown, f"{name}: {section} keys accelerate launch does not know: {unknown}"
    if name == "fsdp.yaml":
        # FSDP2 full shard: parameters are resharded after each unit's forward (FSDP1's FULL_SHARD)
        assert config.fsdp_config["fsdp_version"] == 2 and config.fsdp_config["fsdp_reshard_after_forward"] is True
    if name.startswith("deepspeed"):
        assert config.deepspeed_config["zero_stage"] == int(name[-6])


def test_scale_doc_gives_a_command_for_every_config():
    doc = (ROOT / "docs" / "scale.md").read_text(encoding="utf-8")
    for name in EXPECTED:
        assert f"--config_file configs/accelerate/{name}" in doc


def recipe():
    return yaml.safe_load(RECIPE.read_text(encoding="utf-8"))


def test_recipe_keys_are_fields_of_the_commands_configs():
    from dpokit import config as cfg
    from dpokit.config import DPOConfig, build_config

    data = recipe()
    assert set(data) == {"model", "output", "sft", "dpo"}
    dpo_fields = {f.name for f in dataclasses.fields(DPOConfig)}
    assert set(data["dpo"]) <= dpo_fields - {"model", "ref", "output"}, set(data["dpo"]) - dpo_fields
    assert data["dpo"]["beta"] == 0.1
    build_config(DPOConfig, {**data["dpo"], "output": data["output"] + "/dpo"}, str(RECIPE))  # values valid too
    if not hasattr(cfg, "SFTConfig"):
        pytest.skip("dpokit.config.SFTConfig does not exist yet: the sft section's keys are not checked")
    sft_fields = {f.name for f in dataclasses.fields(cfg.SFTConfig)}
    assert set(data["sft"]) <= sft_fields - {"model", "output"}, set(data["sft"]) - sft_fields
    build_config(cfg.SFTConfig, {**data["sft"], "output": data["output"] + "/sft"}, str(RECIPE))


def test_recipe_loads_through_the_pipeline_reader():
    pipeline = pytest.importorskip("dpokit.pipeline", reason="the pipeline command is not there yet")
    recipe_ = pipeline.load_recipe(str(RECIPE))
    assert recipe_.sft.lora_r == 16 and recipe_.dpo.beta == 0.1 and recipe_.dpo.epochs == 3.0


@pytest.fixture(scope="module")
def mistral():
    from dpokit.plan import model_shape

    return model_shape(str(MISTRAL), lora_r=recipe()["dpo"]["lora_r"])


def test_shipped_mistral_config_is_mistral_7b(mistral):
    assert mistral.params == 7_241_732_096  # Mistral-7B-v0.1's published parameter count (7.24B)
    assert (mistral.layers, mistral.hidden, mistral.intermediate, mistral.heads, mistral.kv_heads) == (32, 4096, 14336, 32, 8)
    assert not mistral.tied and mistral.lora_params == 41_943_040  # r 16 on q,k,v,o,gate,up,down of 32 layers


def test_recipe_plan_fits_8x80_with_lora_and_not_full_finetuning_on_one_24gb_card(mistral):
    from dpokit.plan import PlanSettings, make_plan

    dpo = recipe()["dpo"]
    recipe_settings = PlanSettings(
        gpus=8, gpu_mem_gb=80, lora=True, lora_r=dpo["lora_r"], lora_targets=dpo["lora_targets"],
        batch_size=dpo["batch_size"], grad_accum=dpo["grad_accum"], max_length=dpo["max_length"],
        prompt_length=dpo["max_prompt_length"], dtype=dpo["dtype"],
        gradient_checkpointing=dpo["gradient_checkpointing"], reference_cache=dpo["reference_cache"])
    plan = make_plan(mistral, recipe_settings)
    assert plan.fits, plan.parts
    assert plan.parts["reference"] == 0 and plan.parts["gradients"] < 1 * 2**30  # adapters only
    full = make_plan(mistral, dataclasses.replace(recipe_settings, gpus=1, gpu_mem_gb=24, lora=False,
                                                   reference_cache="off", batch_size=4))
    assert not full.fits
    assert full.parts["reference"] == mistral.params * 2  # a bf16 copy
    assert full.parts["weights"] + full.parts["gradients"] + full.parts["optimizer"] == 4 * mistral.params * 2


def test_settings_deepspeed_cannot_honour_are_refused_before_loading(monkeypatch):
    from dpokit.config import DPOConfig
    from dpokit.errors import UserError
    from dpokit.train import engine

    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("LOCAL_RANK", "0")
    with pytest.raises(UserError, match="--skip-nonfinite does not work under DeepSpeed"):
        engine.check_config(DPOConfig(skip_nonfinite=True))
    with pytest.raises(UserError, match="needs --mixed-precision bf16"):
        engine.check_config(DPOConfig(dtype="bfloat16"))
    engine.check_config(DPOConfig(mixed_precision="bf16"))  # DeepSpeed's bf16 mode over float32 weights is fine
    assert engine.run_dtype(DPOConfig()) == "float32"  # DeepSpeed keeps float32 masters: load float32
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    engine.check_config(DPOConfig(skip_nonfinite=True))  # without DeepSpeed the loop skips the step itself
    assert engine.run_dtype(DPOConfig()) is None


def test_fsdp_file_wraps_the_decoder_layers_of_whatever_model_it_is_given(monkeypatch):
    """fsdp.yaml names no layer class: accelerate reads `_no_split_modules`, which dpokit's wrappers pass on from the
    model. (The file used to list Llama, Mistral and Qwen2 classes, and accelerate requires every listed class to be
    in the model, so it failed on all three.)"""
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.fsdp_utils import fsdp2_prepare_auto_wrap_policy

    from dpokit.logprobs import PairLogpsModule, SequenceLogpsModule
    from tiny import make_model

    fsdp = load_config_from_file(str(ACCELERATE / "fsdp.yaml")).fsdp_config
    assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp
    for key, value in fsdp.items():  # the launcher's environment for these keys, as accelerate launch writes it
        monkeypatch.setenv(key.upper(), str(value).lower() if isinstance(value, bool) else str(value))
    model = make_model(512)
    for wrapper in (PairLogpsModule(model), SequenceLogpsModule(model)):
        assert wrapper._no_split_modules == ["LlamaDecoderLayer"]
        policy = fsdp2_prepare_auto_wrap_policy(FullyShardedDataParallelPlugin(), wrapper)
        wrapped = [name for name, module in wrapper.named_modules() if policy(module)]
        assert wrapped == [f"model.model.layers.{i}" for i in range(model.config.num_hidden_layers)]


def test_a_sharded_checkpoint_is_refused_by_a_plain_process(tmp_path):
    """A checkpoint with `sharded/` (DeepSpeed / FSDP) resumed without that engine: one line, nothing loaded."""
    from accelerate import Accelerator

    from dpokit.errors import UserError
    from dpokit.train.checkpoint import load_checkpoint

    checkpoint = tmp_path / "checkpoint-2"
    (checkpoint / "sharded").mkdir(parents=True)
    with pytest.raises(UserError, match="written under DeepSpeed or FSDP; resume it under the same kind of launch"):
        load_checkpoint(checkpoint, None, None, None, Accelerator(cpu=True))
