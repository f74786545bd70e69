"""`dpokit reward` as a story: data → a 1-logit classifier on the model → the one loop with the Bradley–Terry
objective → save final/ as an `hf:DIR` judge → summarise with held-out pair accuracy and its interval."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from ..config import RewardConfig, dump_config
from ..data.prepare import PreparedData, data_summary, load_both, split_pairs, tokenize_splits
from ..data.validate import load_pairs
from ..errors import UserError
from ..eval.intervals import wilson
from ..judges.classifier import REWARD_INPUT
from ..models import DTYPES, disable_dropout, is_adapter_dir, lora_config, prepare_policy
from .dpo import check_sizes
from .loop import total_steps, train_loop
from .objectives import RewardObjective
from .setup import TrainedRun, finish_run, leave_nothing_on_error, start_run, summary_tail
from .source import ShuffledSource


def prepare_reward_data(config: RewardConfig, tokenizer) -> PreparedData:
    """The same pairs as `dpokit dpo` reads (pairs, ranked or scored lists, --columns, --pairs), split by prompt and
    tokenized the same way: every data problem surfaces here, before the model loads."""
    train_report, eval_report, summary = load_both(config, load_pairs, data_summary)
    train_pairs, eval_pairs = split_pairs(config, train_report.pairs, eval_report.pairs if eval_report else None)
    return tokenize_splits(config, tokenizer, train_pairs, eval_pairs, summary)


def load_reward_model(path: Path, config: RewardConfig, dtype: str, tokenizer):
    """The causal LM at `path` with a new 1-logit score head in place of its LM head (seeded), dropout off; with
    --lora-r, LoRA adapters (peft's SEQ_CLS task: the score head trains in full beside them)."""
    from transformers import AutoModelForSequenceClassification

    if is_adapter_dir(path):
        raise UserError(f"--model {config.model}: a LoRA adapter folder; a reward model starts from a full model: "
                        f"merge it first (dpokit export {config.model} --merge --output DIR), then --model DIR")
    torch.manual_seed(config.seed)  # the new score head's initialisation is part of the run
    model = AutoModelForSequenceClassification.from_pretrained(
        str(path), num_labels=1, dtype=DTYPES[dtype], use_safetensors=None if config.allow_pickle else True,
        trust_remote_code=config.trust_remote_code, attn_implementation=config.attention)
    model.config.pad_token_id = tokenizer.pad_token_id  # rows are right-padded; the pooled token is found by it
    # How this model's inputs are built, so the hf: judge builds the same ids (judges/classifier.py).
    setattr(model.config, REWARD_INPUT, {"tokenization": "pair", "max_length": config.max_length,
                                         "max_prompt_length": config.max_prompt_length,
                                         "chat": not config.no_chat_template})
    disable_dropout(model)
    model.train()
    if config.lora_r:
        from peft import get_peft_model

        torch.manual_seed(config.seed)
        lora = lora_config(config)
        lora.task_type = "SEQ_CLS"  # keeps the score head trainable (and saved) beside the adapters
        model = get_peft_model(model, lora)
    return prepare_policy(model, config, path, new_adapters=False)  # gradient checkpointing, adapter base path


def merged_for_judging(model):
    """A LoRA reward model with its adapters folded in, so final/ loads as a plain `hf:DIR` model."""
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def run_reward(config: RewardConfig, *, quiet: bool = False, callbacks: Sequence = ()) -> TrainedRun:
    """`dpokit reward`: one process, or one of several under `accelerate launch` (only the main one writes)."""
    existed = Path(config.output).exists()
    started, accelerator, run_dir, dtype, model_path, tokenizer = start_run(config)
    main = accelerator.is_main_process
    with leave_nothing_on_error(config, run_dir, existed, main):
        data = prepare_reward_data(config, tokenizer)
        check_sizes(config, data)
    if main and not quiet:
        print(describe_run(config, data), flush=True)
    model = load_reward_model(model_path, config, dtype, tokenizer)
    if main:
        dump_config(config, run_dir / "config.yaml")

    objective = RewardObjective(config)
    source = ShuffledSource.for_run(data.train, config, objective.length)
    result = train_loop(model, objective, tokenizer, source, data.eval, config, run_dir, accelerator, callbacks)
    if not main:
        return TrainedRun(result.totals(), result.model)
    trained, state_dict = result.model, result.state_dict
    if config.lora_r:
        trained, state_dict = merged_for_judging(trained), None
    summary = finish_run(run_dir, trained, tokenizer, config, {
        "command": "reward", **data.summary, **result.totals(), "dtype": dtype, "batch_size": config.batch_size,
        "verdict": verdict(result.eval_end or {})}, accelerator, started, state_dict)
    if not quiet:
        print(format_summary(summary))
    return TrainedRun(summary, trained)


def describe_run(config: RewardConfig, data: PreparedData) -> str:
    d = data.summary["data"]
    dropped = ", ".join(f"{k} {v}" for k, v in d["dropped"].items()) or "none"
    steps = total_steps(config, len(data.train))
    source = f"from {config.eval_data}" if config.eval_data else "split by prompt"
    return (f"dpokit reward: {d['path']}: shape {d['shape']}, {d['rows']} rows, dropped {dropped}\n"
            f"  pairs: {len(data.train)} for training, {len(data.eval)} held out ({source}); {steps} steps × "
            f"{config.batch_size} pairs, learning rate {config.learning_rate:g}")


def verdict(end: dict) -> str | None:
    """Held-out pair accuracy against chance (0.5: a reward that does not tell chosen from rejected), by its 95%
    Wilson interval."""
    if "eval/rewards/accuracies" not in end:
        return None
    accuracy, n = end["eval/rewards/accuracies"], end["eval/pairs"]
    low, high = end.get("eval/rewards/accuracies_ci") or wilson(round(accuracy * n), n)
    figure = f"held-out pair accuracy {accuracy:.3f} (95% interval {low:.3f}–{high:.3f}, {n} pairs)"
    if low > 0.5:
        return f"The reward model ranks held-out pairs better than chance: {figure}."
    if high < 0.5:
        return f"The reward model ranks held-out pairs worse than chance: {figure}."
    return (f"The reward model is not detectably better than chance on held-out pairs: {figure} includes 0.5; more "
            "steps, more data or more held-out pairs may tell.")


def format_summary(s: dict) -> str:
    seen = f"{s['steps'] * s['batch_size']} drawn from {s['pairs']['train']}"
    lines = [f"dpokit reward: {s['steps']} steps, {seen} pairs, in {s['wall_seconds']:.0f} s "
             f"({s['tokens_per_s']:.0f} tokens/s training, peak RSS {s['peak_rss_mb']:.0f} MB)"]
    trunc = {k: v for k, v in s["tokenization"].items() if v}
    if trunc:
        lines.append(f"  tokenization: {trunc}")
    start, end = s.get("eval_start") or {}, s.get("eval_end") or {}
    if end:
        lines.append(f"  held-out ({s['pairs']['eval']} pairs)        start     end")
        for key, label in (("eval/loss", "loss (Bradley–Terry)"), ("eval/rewards/accuracies", "pair accuracy"),
                           ("eval/rewards/margins", "reward margin")):
            interval = end.get(key + "_ci")
            shown = f"   95% interval {interval[0]:.4f} – {interval[1]:.4f}" if interval else ""
            lines.append(f"    {label:<24}{start.get(key, float('nan')):>8.4f}{end[key]:>8.4f}{shown}")
        lines.append("  (accuracy: r(chosen) > r(rejected), a tie counts wrong; at the start the score head is new, "
                     "so accuracy is near chance)")
        if s.get("verdict"):
            lines.append("  " + s["verdict"])
    lines += summary_tail(s)
    lines.append(f"  judge with: --judge hf:{s['output']}")
    return "\n".join(lines)
