"""`dpokit pipeline`: every shipped recipe loads; SFT → DPO runs and DPO's reference is the SFT model."""
import json
from pathlib import Path

import pytest
import yaml

from dpokit.errors import UserError
from dpokit.pipeline import load_recipe
from test_cli_dpo import dpokit, pairs_file, read_metrics  # noqa: F401  (pairs_file is a fixture)

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


def test_recipes_exist():
    assert {p.name for p in RECIPES} >= {"tiny-cpu.yaml", "smollm2.yaml", "zephyr-7b-lora.yaml"}


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_loads_and_validates(path):
    recipe = load_recipe(str(path))
    assert recipe.dpo.model == str(recipe.output / "sft" / "final")  # DPO starts from the SFT result
    assert recipe.dpo.ref is None  # ... and, with no ref, uses it as the reference


def test_recipe_errors_name_the_key(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text(yaml.safe_dump({"dpo": {"model": "x"}}))
    with pytest.raises(UserError, match="dpo.model is set by the pipeline"):
        load_recipe(str(bad))
    bad.write_text(yaml.safe_dump({"sft": {"learning_rat": 1e-5}}))
    with pytest.raises(UserError, match="sft: unknown key 'learning_rat'"):
        load_recipe(str(bad))


def test_preferred_ft_reads_the_dpo_file_through_the_dpo_mapping(tmp_path):
    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(yaml.safe_dump({"dpo": {"data": "qa.jsonl", "columns": {"prompt": "question"}}}))
    recipe = load_recipe(str(recipe_file))
    assert recipe.sft.data == recipe.dpo.data == "qa.jsonl"
    assert recipe.sft.columns == recipe.dpo.columns == "prompt=question"
    recipe_file.write_text(yaml.safe_dump({"sft": {"data": "sft.jsonl"}, "dpo": {"columns": "prompt=question"}}))
    assert load_recipe(str(recipe_file)).sft.columns is None  # its own file: no mapping borrowed


@pytest.mark.slow
def test_pipeline_dpo_reference_is_the_sft_model(tiny_model_dir, pairs_file, tmp_path):  # noqa: F811
    stage = {"max_steps": 3, "batch_size": 4, "max_length": 192, "max_prompt_length": 96, "eval_fraction": 0.25}
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"model": str(tiny_model_dir), "output": str(tmp_path / "pipe"),
                                      "sft": {**stage, "learning_rate": 1e-2},
                                      "dpo": {**stage, "data": str(pairs_file), "learning_rate": 1e-3}}))
    result = dpokit("pipeline", "--config", recipe)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Preferred-FT" in result.stdout
    pipe = tmp_path / "pipe"
    dpo_config = yaml.safe_load((pipe / "dpo" / "config.yaml").read_text())
    assert dpo_config["model"] == str(pipe / "sft" / "final") and dpo_config["ref"] is None
    step0 = read_metrics(pipe / "dpo")[0]
    assert step0["step"] == 0 and step0["eval/rewards/margins"] == 0.0  # policy = reference at the start

    # The same DPO stage from the base model sees different log-probs at step 0: the reference was the SFT model.
    base = tmp_path / "from-base"
    result = dpokit("dpo", "--model", tiny_model_dir, "--data", pairs_file, "--output", base,
                    *[a for k, v in stage.items() for a in (f"--{k.replace('_', '-')}", v)])
    assert result.returncode == 0, result.stderr[-2000:]
    assert abs(read_metrics(base)[0]["eval/logps/chosen"] - step0["eval/logps/chosen"]) > 1.0

    # --resume keeps finished stages
    again = dpokit("pipeline", "--config", recipe, "--resume")
    assert again.returncode == 0 and again.stdout.count("already finished") == 2
    refused = dpokit("pipeline", "--config", recipe)
    assert refused.returncode == 2 and "in use" in refused.stderr


@pytest.mark.slow
def test_tiny_cpu_recipe_runs_end_to_end_on_the_embedded_smollm2(tmp_path):
    """The shipped smoke recipe on the real embedded model (GGUF → safetensors once, then SFT → DPO)."""
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "tiny-cpu.yaml"
    result = dpokit("pipeline", "--config", recipe, "--output", tmp_path / "smol")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tmp_path / "smol" / "dpo" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["eval_start"]["eval/rewards/margins"] == 0.0
    assert yaml.safe_load((tmp_path / "smol" / "dpo" / "config.yaml").read_text())["model"].endswith("sft/final")
