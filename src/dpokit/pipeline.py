"""`dpokit pipeline --config recipe.yaml`: the two-stage recipe, SFT then DPO, in one command.

A recipe is the pipeline's config file (config.PipelineConfig: unknown keys refused, flags win), with the keys:
    model:  the starting model (default: the embedded SmolLM2-135M-Instruct)
    output: the pipeline folder; the stages write OUTPUT/sft and OUTPUT/dpo
    sft:    keys of `dpokit sft` (optional: without `data`, SFT trains on the DPO set's chosen answers, "Preferred-FT")
    dpo:    keys of `dpokit dpo`
The DPO stage starts from the SFT result and, with no `ref`, uses it as the reference (its log-probs before the
first DPO step). `model`, `output` and `ref` are set by the pipeline, never inside a stage.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

from .config import DEFAULT_DATA, DPOConfig, PipelineConfig, SFTConfig, build_config, read_yaml
from .errors import UserError

SET_BY_PIPELINE = ("model", "output", "ref", "resume", "overwrite")


@dataclass(frozen=True)
class Recipe:
    sft: SFTConfig
    dpo: DPOConfig
    output: Path
    preferred_ft: bool  # SFT on the preference set's chosen answers


def load_recipe(path: str, *, model: str | None = None, output: str | None = None) -> Recipe:
    """Read and validate a recipe file; `model` and `output` override its own."""
    values = read_yaml(path)
    values.update({k: v for k, v in (("model", model), ("output", output)) if v is not None})
    return make_recipe(build_config(PipelineConfig, values, path), path)


def make_recipe(config: PipelineConfig, source: str = "config") -> Recipe:
    """The two stages' configs; every key problem names the source and the stage."""
    stages = {}
    for stage in ("sft", "dpo"):
        values = {k.replace("-", "_"): v for k, v in (getattr(config, stage) or {}).items()}
        fixed = sorted(set(values) & set(SET_BY_PIPELINE))
        if fixed:
            raise UserError(f"{source}: {stage}.{fixed[0]} is set by the pipeline; put model and output at the top "
                            "level")
        stages[stage] = values
    root = Path(config.output)
    preferred_ft = "data" not in stages["sft"]
    if preferred_ft:
        stages["sft"]["data"] = stages["dpo"].get("data", DEFAULT_DATA)
        if "columns" in stages["dpo"] and "columns" not in stages["sft"]:  # the same file is read the same way
            stages["sft"]["columns"] = stages["dpo"]["columns"]
    sft = build_config(SFTConfig, {**stages["sft"], "model": str(config.model), "output": str(root / "sft")},
                       f"{source}: sft")
    dpo = build_config(DPOConfig, {**stages["dpo"], "model": str(root / "sft" / "final"), "output": str(root / "dpo")},
                       f"{source}: dpo")
    return Recipe(sft, dpo, root, preferred_ft)


def stage_done(config) -> bool:
    return (Path(config.output) / "summary.json").is_file() and (Path(config.output) / "final").is_dir()


def run_pipeline(recipe: Recipe, *, overwrite: bool = False, resume: bool = False) -> dict:
    """SFT → DPO. With `resume`, a finished stage is kept and an unfinished one continues from its checkpoint."""
    from .train.checkpoint import latest_checkpoint
    from .train.dpo import run_dpo
    from .train.sft import run_sft

    results = {}
    for name, config, run in (("sft", recipe.sft, run_sft), ("dpo", recipe.dpo, run_dpo)):
        if resume and stage_done(config):
            print(f"dpokit pipeline: {name} already finished in {config.output}; kept", flush=True)
            results[name] = json.loads((Path(config.output) / "summary.json").read_text(encoding="utf-8"))
            continue
        continuing = resume and Path(config.output).is_dir() and latest_checkpoint(Path(config.output)) is not None
        what = "Preferred-FT on the chosen answers of " + config.data if name == "sft" and recipe.preferred_ft else config.data
        print(f"dpokit pipeline: stage {name} ({what}) → {config.output}", flush=True)
        # under --resume an unfinished stage without a checkpoint has nothing worth keeping: start it again
        results[name] = run(replace(config, overwrite=(overwrite or resume) and not continuing,
                                    resume=continuing)).summary
    return results
