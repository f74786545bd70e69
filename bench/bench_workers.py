"""One training run per process: TRL's DPOTrainer or dpokit, timed step by step.

Each worker reads a spec (model, pairs, steps) and writes a result JSON: per-step seconds, tokens and losses, and
the one-time reference pass. The parent measures the process's peak RSS (os.wait4), so a worker only trains.

A step's time runs from fetching and collating its batch to the end of the optimizer step (and zero_grad) in both
trainers; loading, the one-time reference pass, logging to disk and saving are outside it.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

BETA = 0.1
LEARNING_RATE = 1e-6
MAX_LENGTH = 512
MAX_GRAD_NORM = 1.0  # TRL's (transformers') default; dpokit's default is 10, so it is set explicitly
SEED = 0


def run_trl(spec: dict, precompute: bool) -> dict:
    """TRL 1.16 DPOTrainer at its defaults, but fp32, no activation checkpointing, CPU, sequential data order."""
    import dataclasses

    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    timing = {"ref_pass_s": 0.0, "fetch_started": None, "tokens": 0, "steps": []}

    class BenchTrainer(DPOTrainer):
        def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
            # TRL 1.16 always tokenizes text itself (no pre-tokenized path); hand it dpokit's ids unchanged.
            if {"prompt_ids", "chosen_ids", "rejected_ids"} <= set(dataset.column_names):
                return dataset
            return super()._prepare_dataset(dataset, processing_class, args, dataset_name)

        def _precompute_ref_logps(self, dataset, name, batch_size):
            started = time.perf_counter()
            out = super()._precompute_ref_logps(dataset, name, batch_size)
            timing["ref_pass_s"] += time.perf_counter() - started
            return out

        def get_batch_samples(self, *args, **kwargs):  # fetch + collate: the start of a step
            timing["fetch_started"] = time.perf_counter()
            return super().get_batch_samples(*args, **kwargs)

        def training_step(self, model, inputs, *args, **kwargs):
            timing["tokens"] += int(inputs["attention_mask"].sum())  # non-padding tokens, prompt in both rows
            return super().training_step(model, inputs, *args, **kwargs)

    class StepTimer(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            timing["steps"].append((time.perf_counter() - timing["fetch_started"], timing["tokens"]))
            timing["tokens"] = 0

    fields = {f.name for f in dataclasses.fields(DPOConfig)}
    no_checkpointing = "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"
    args = DPOConfig(output_dir=spec["output"], report_to="none", use_cpu=True, bf16=False, fp16=False,
                     beta=BETA, learning_rate=LEARNING_RATE, loss_type=["sigmoid"], max_length=MAX_LENGTH,
                     per_device_train_batch_size=spec["batch_size"], gradient_accumulation_steps=1,
                     max_steps=spec["steps"], precompute_ref_log_probs=precompute, train_sampling_strategy="sequential",
                     logging_steps=1, save_strategy="no", disable_tqdm=True, seed=SEED, **{no_checkpointing: False})
    assert args.max_grad_norm == MAX_GRAD_NORM and args.lr_scheduler_type == "linear" and args.warmup_steps == 0
    rows = json.loads(Path(spec["ids_file"]).read_text())
    tokenizer = AutoTokenizer.from_pretrained(spec["model"])
    trainer = BenchTrainer(model=spec["model"], args=args, train_dataset=Dataset.from_list(rows),
                           processing_class=tokenizer, callbacks=[StepTimer()])
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]
    return {"step_seconds": [s for s, _ in timing["steps"]], "step_tokens": [t for _, t in timing["steps"]],
            "losses": losses, "ref_pass_s": timing["ref_pass_s"] if precompute else None}


def dpokit_argv(spec: dict, reference_cache: str) -> list[str]:
    """The `dpokit dpo` command line this run is (printed in the README)."""
    return ["dpo", "--model", spec["model"], "--data", spec["pairs_file"], "--eval-fraction", "0",
            "--max-steps", str(spec["steps"]), "--batch-size", str(spec["batch_size"]),
            "--learning-rate", str(LEARNING_RATE), "--beta", str(BETA), "--max-length", str(MAX_LENGTH),
            "--max-prompt-length", str(MAX_LENGTH - 1), "--max-grad-norm", str(MAX_GRAD_NORM), "--seed", str(SEED),
            "--reference-cache", reference_cache, "--output", spec["output"], "--overwrite"]


def run_dpokit(spec: dict, reference_cache: str) -> dict:
    """`dpokit dpo` run in this process, with two wrappers: one times the reference setup, one checks the data.

    $DPOKIT_CACHE is a fresh folder (the parent sets it), so the cached reference is computed in this run.
    """
    from dpokit import cli
    from dpokit.train import dpo as story
    from dpokit.train.source import pair_order

    timing = {"ref_pass_s": 0.0}
    expected = json.loads(Path(spec["ids_file"]).read_text())  # in TRL's order

    setup_reference, prepare_data = story.setup_reference, story.prepare_preference_data

    def timed_setup_reference(*args, **kwargs):
        started = time.perf_counter()
        out = setup_reference(*args, **kwargs)
        timing["ref_pass_s"] = time.perf_counter() - started
        return out

    def checked_prepare_data(config, tokenizer):
        data = prepare_data(config, tokenizer)
        b, n = spec["batch_size"], len(data.train)
        for step in range(spec["steps"]):
            got = [data.train[i] for i in pair_order(n, step, b, config.seed)]
            want = expected[step * b:(step + 1) * b]
            same = all((list(g.prompt_ids), list(g.chosen_ids), list(g.rejected_ids))
                       == (w["prompt_ids"], w["chosen_ids"], w["rejected_ids"]) for g, w in zip(got, want))
            if not same or len(got) != len(want):
                raise SystemExit(f"dpokit step {step + 1} would train on other token ids than TRL's; pairs.jsonl "
                                 "is out of step with ids.json")
        return data

    story.setup_reference, story.prepare_preference_data = timed_setup_reference, checked_prepare_data
    argv = dpokit_argv(spec, reference_cache)
    print("dpokit " + " ".join(argv), flush=True)
    if cli.main(argv) != 0:
        raise SystemExit("dpokit dpo failed")
    records = [json.loads(line) for line in (Path(spec["output"]) / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "tokens_per_s" in r]  # training steps (no eval lines here: eval fraction 0)
    tokens, before = [], 0
    for r in records:
        tokens.append(r["tokens"] - before)
        before = r["tokens"]
    return {"step_seconds": [t / r["tokens_per_s"] for t, r in zip(tokens, records)], "step_tokens": tokens,
            "losses": [r["loss"] for r in records],
            "ref_pass_s": timing["ref_pass_s"] if reference_cache == "on" else None}


RUNS = {
    "trl": lambda spec: run_trl(spec, precompute=False),
    "trl-precompute": lambda spec: run_trl(spec, precompute=True),
    "dpokit": lambda spec: run_dpokit(spec, reference_cache="on"),
    "dpokit-live": lambda spec: run_dpokit(spec, reference_cache="off"),
}


def main(run: str, spec_path: str, result_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    if spec.get("threads"):
        import torch

        torch.set_num_threads(spec["threads"])
    result = RUNS[run](spec)
    Path(result_path).write_text(json.dumps(result))
