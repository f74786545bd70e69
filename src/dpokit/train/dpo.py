"""`dpokit dpo` as a story: set up (data, then models) → train → save → summarise."""
from __future__ import annotations


from pathlib import Path
from typing import Sequence

import torch

from .. import memory
from .. import reference as ref_cache
from ..config import DPOConfig, dump_config
from ..data.collate import collator
from ..data.prepare import prepare_preference_data
from ..errors import UserError
from ..losses import LN2, LOSSES, loss_terms, needs_reference, starts_at_ln2
from ..models import (adapter_base, dtype_name, frozen_copy, is_adapter_dir, is_peft, load_model, load_policy,
                      prepare_policy, resolve_model_path)
from ..reference import AdaptersOffReference, LiveReference
from ..eval.intervals import verdict
from .given import Given, check_given, with_rows
from .loop import total_steps, train_loop
from .objectives import DPOObjective
from .probe import GenerationProbe
from .setup import TrainedRun, finish_run, leave_nothing_on_error, start_run, summary_tail
from .source import ShuffledSource


def check_strengths(config: DPOConfig, pairs) -> None:
    if any(LOSSES[name].needs_strengths for name, _ in loss_terms(config.loss, config.loss_weights)):
        missing = [p.origin for p in pairs if p.strength is None]
        if missing:
            raise UserError(f"{missing[0]}: the {config.loss} loss needs a per-pair `margin` (or score_chosen/"
                            f"score_rejected); {len(missing)} pairs have none")


def check_sizes(config: DPOConfig, data) -> None:
    """A file too small for one batch, or a default split that holds nothing out, is refused with the fix."""
    train, held = len(data.train), len(data.eval)
    if train < config.batch_size:
        raise UserError(f"{config.data}: {train} training pairs but --batch-size {config.batch_size}: every step would "
                        f"repeat the same pairs; use --batch-size {train} or less (and --grad-accum to match), or add "
                        "data")
    if not held and config.eval_fraction is None and not config.eval_data:
        raise UserError(f"{config.data}: the default held-out split (10% of the prompts) holds out no pair of these "
                        f"{train}: the run could not show whether it learned; give --eval-data FILE, a larger "
                        "--eval-fraction, or --eval-fraction 0 to train without held-out figures")


def estimate_memory(config: DPOConfig, model_path, ref_path, dtype: str, given: Given = Given()):
    """The up-front memory check; a model object is counted from its config, as a folder would be."""
    if given.model is not None or given.reference is not None:
        import tempfile

        with tempfile.TemporaryDirectory() as folder:
            if given.model is not None:
                (Path(folder) / "model").mkdir()
                given.model.config.save_pretrained(Path(folder) / "model")
            if given.reference is not None:
                (Path(folder) / "reference").mkdir()
                given.reference.config.save_pretrained(Path(folder) / "reference")
            return estimate_memory(config, model_path if given.model is None else Path(folder) / "model",
                                   Path(folder) / "reference" if given.reference is not None else ref_path, dtype)
    micro = config.batch_size // config.grad_accum
    model_path = adapter_base(model_path) if is_adapter_dir(model_path) else model_path  # LoRA: counted as full, the safe side
    ref_path = adapter_base(ref_path) if ref_path is not None and is_adapter_dir(ref_path) else ref_path
    est = memory.estimate(model_path, dtype=dtype, micro_batch_pairs=micro, max_length=config.max_length,
                          separate_reference=config.reference_cache == "off", reference_path=ref_path)
    memory.check_fits(est, device="cuda" if torch.cuda.is_available() else "cpu", micro_batch_pairs=micro,
                      max_length=config.max_length)
    return est


def setup_reference(config: DPOConfig, ref_path, policy, data, dtype: str, tokenizer, accelerator, given: Given,
                    source: ShuffledSource):
    """Live reference model, or cached log-probs (computed now if missing; no reference kept in memory after).

    `ref_path` is the --ref folder, or the policy's own folder when there is no --ref (None for a model object);
    `source` is the run's data source: the cache needs only the training pairs its steps reach."""
    lean = not config.full_logits

    def reference_model():
        if given.reference is not None:
            return given.reference.eval().requires_grad_(False)
        if not config.ref:
            return None  # the policy before its first step is the reference
        return load_model(ref_path, dtype=dtype, trust_remote_code=config.trust_remote_code, train=False,
                          allow_pickle=config.allow_pickle, attention=config.attention)

    if config.reference_cache == "off":
        model = reference_model()
        if model is None and is_peft(policy):
            if ref_path is not None and is_adapter_dir(ref_path):
                raise UserError("continuing from a LoRA adapter uses that adapter, before training, as the reference: "
                                "keep --reference-cache on (the default), or give --ref a merged model folder")
            return AdaptersOffReference(policy, lean=lean)  # the base: no second copy of the weights
        return LiveReference(model if model is not None else frozen_copy(policy), lean=lean)
    splits = {"train": data.train, "eval": data.eval}
    in_memory = given.reference if given.reference is not None else given.model if not config.ref else None
    model_fp = ref_cache.weights_fingerprint(in_memory) if in_memory is not None \
        else ref_cache.model_fingerprint(ref_path)
    key = ref_cache.cache_key(model_fp, dtype, ref_cache.data_fingerprint(splits))
    path = ref_cache.cache_path_for(key)
    tables = ref_cache.load_cache(path, key, splits).tables if path.is_file() else ref_cache.empty_tables(splits)
    missing = ref_cache.missing_rows(tables, {"train": source.reached(total_steps(config, len(data.train))),
                                              "eval": list(range(len(data.eval)))})
    # Every process has looked at the cache before any writes to it, so all take the same branch (and meet at the
    # same barriers); otherwise a process that read the freshly written file would skip the barrier and hang the rest.
    accelerator.wait_for_everyone()
    computed = sum(map(len, missing.values()))
    if computed:
        if accelerator.is_main_process:
            model = reference_model()
            fill_cache(model if model is not None else policy, tables, splits, missing, config, tokenizer, accelerator)
            ref_cache.save_cache(path, key, tables, ref_path if ref_path is not None else "a model object")
            del model
        accelerator.wait_for_everyone()  # the main process filled the cache; the others read what it wrote
        if not accelerator.is_main_process:
            return ref_cache.load_cache(path, key, splits)
    cached = ref_cache.CachedReference(tables, path)
    cached.computed_rows = computed  # rows this run computed (0: every row came from an earlier run's cache)
    return cached


def fill_cache(source, tables, splits, missing, config: DPOConfig, tokenizer, accelerator) -> None:
    """Reference log-probs for the missing rows, from `source` in eval mode (no --ref: the untrained policy)."""
    was_training = source.training
    source.eval()
    source.to(accelerator.device)
    collate = collator(config)
    ref_cache.fill_rows(source, tables, splits, missing, collate, tokenizer.pad_token_id,
                        config.batch_size // config.grad_accum, not config.full_logits, accelerator.device)
    source.train(was_training)


def run_dpo(config: DPOConfig, *, quiet: bool = False, given: Given = Given(), callbacks: Sequence = ()) -> TrainedRun:
    """`dpokit dpo` and `dpokit.train`: one process, or one of several under `accelerate launch` (only the main
    process writes files). `given`: model, reference, tokenizer or rows in memory, from the Python API."""
    check_given(config, given)
    existed = Path(config.output).exists()
    started, accelerator, run_dir, dtype, model_path, tokenizer = start_run(config, given.tokenizer)
    if given.model is not None:
        dtype = dtype_name(next(given.model.parameters()).dtype)
    main = accelerator.is_main_process
    # Data first: every data problem surfaces before minutes go into loading a model.
    with leave_nothing_on_error(config, run_dir, existed, main):
        config = with_rows(config, given, run_dir, main, accelerator)
        data = prepare_preference_data(config, tokenizer)
        check_strengths(config, data.train + data.eval)
        check_sizes(config, data)

    ref_path = resolve_model_path(config.ref, allow_pickle=config.allow_pickle) if config.ref else model_path
    estimated = estimate_memory(config, model_path, ref_path if config.ref else None, dtype, given)
    if main and not quiet:  # what the run will do, before minutes go into it
        print(describe_run(config, data, estimated), flush=True)
    policy = prepare_policy(given.model.train(), config, None) if given.model is not None \
        else load_policy(model_path, config, dtype)
    # Reference-free losses (simpo, orpo): no reference model, no reference pass, no cache.
    source = ShuffledSource.for_run(data.train, config, DPOObjective.length)
    reference = setup_reference(config, ref_path, policy, data, dtype, tokenizer, accelerator, given, source) \
        if needs_reference(config.loss) else None
    if main:
        dump_config(config, run_dir / "config.yaml")

    objective = DPOObjective(reference, config)
    objective.policy_is_reference = not config.ref and given.reference is None  # the untrained policy is the reference
    probe = make_probe(config, data, tokenizer, run_dir, accelerator)
    result = train_loop(policy, objective, tokenizer, source, data.eval, config, run_dir, accelerator, callbacks,
                        probe)
    if not main:
        return TrainedRun(result.totals(), result.model)
    reference_source = "none" if reference is None else str(reference.path) if getattr(reference, "path", None) \
        else "live"
    extra = {"reference_rows_computed": reference.computed_rows} if hasattr(reference, "computed_rows") else {}
    if probe is not None:
        extra["probe"] = probe.side_by_side()
    summary = finish_run(run_dir, result.model, tokenizer, config, {
        **data.summary, **result.totals(), **extra, "loss": config.loss, "dtype": dtype, "reference": reference_source,
        "batch_size": config.batch_size,
        "verdict": verdict(result.eval_end or {}, result.eval_start, reference_free=reference is None),
        "estimated_memory_mb": estimated.total / 2**20}, accelerator, started, result.state_dict)
    if not quiet:
        print(format_summary(summary))
    return TrainedRun(summary, result.model)


def make_probe(config: DPOConfig, data, tokenizer, run_dir: Path, accelerator):
    """The generation probe over the first --probe-prompts distinct held-out prompts (one process only: a greedy
    answer on one rank of a sharded model would wait forever for the others)."""
    if not config.probe_prompts or not data.eval or accelerator.num_processes > 1:
        return None
    prompts = list(dict.fromkeys(pair.prompt_ids for pair in data.eval))[:config.probe_prompts]
    return GenerationProbe(prompts, tokenizer, run_dir, max_new_tokens=min(48, config.max_length))


def describe_run(config: DPOConfig, data, estimated) -> str:
    """Shape, split, dropped rows, truncation, the pairs the steps will draw and the memory estimate, in a few lines."""
    d = data.summary["data"]
    unit = "feedback examples" if d.get("feedback") else "pairs"
    dropped = ", ".join(f"{k} {v}" for k, v in d["dropped"].items()) or "none"
    lines = [f"dpokit dpo: {d['path']}: shape {d['shape']}, {d['rows']} rows, dropped {dropped}"]
    if d.get("lists"):
        lists = d["lists"]
        lines.append(f"  ranked lists: {lists['rows']} rows → {lists['pairs']} pairs ({lists['policy']}); dropped: "
                     f"{lists['dropped'] or 'none'}")
    train, held = len(data.train), len(data.eval)
    source = f"from {config.eval_data}" if config.eval_data else "split by prompt"
    if config.max_eval_pairs is not None:
        source += f", at most --max-eval-pairs {config.max_eval_pairs}"
    lines.append(f"  {unit}: {train} for training, {held} held out ({source})")
    cut = {k: v for k, v in data.summary.get("tokenization", {}).items() if v}
    if cut:
        lines.append("  truncated to --max-length/--max-prompt-length: " + ", ".join(f"{k} {v}" for k, v in cut.items()))
    steps = total_steps(config, train)
    drawn = steps * config.batch_size
    lines.append(f"  {steps} steps × {config.batch_size} = {drawn} {unit} drawn ({drawn / max(train, 1):.2g} passes over "
                 f"the training {unit}); loss {config.loss}, β {config.beta:g}, learning rate {config.learning_rate:g}")
    lines.append(f"  memory estimate: {estimated.table()}")
    return "\n".join(lines)


def shorten(text: str, limit: int, tail: bool = False) -> str:
    """One line of at most `limit` characters (the end of it with `tail`)."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    return text[-limit:] if tail else text[:limit] + "…"


def format_summary(s: dict) -> str:
    unit = "feedback examples" if s["data"].get("feedback") else "pairs"
    seen = f"{s['steps'] * s['batch_size']} drawn from {s['pairs']['train']}"
    lines = [f"dpokit dpo: {s['steps']} steps, {seen} {unit}, in {s['wall_seconds']:.0f} s "
             f"({s['tokens_per_s']:.0f} tokens/s training, peak RSS {s['peak_rss_mb']:.0f} MB)"]
    dropped = {k: v for k, v in s["data"]["dropped"].items() if v}
    if dropped:
        lines.append(f"  dropped rows: {dropped}")
    trunc = {k: v for k, v in s["tokenization"].items() if v}
    if trunc:
        lines.append(f"  tokenization: {trunc}")
    start, end = s.get("eval_start") or {}, s.get("eval_end") or {}
    if end:
        lines.append(f"  held-out ({s['pairs']['eval']} {unit})      start     end")
        for key, label in (("eval/loss", f"loss ({s.get('loss', 'sigmoid')})"),
                           ("eval/rewards/accuracies", "reward accuracy"), ("eval/rewards/margins", "reward margin")):
            interval = end.get(key + "_ci")
            shown = f"   95% interval {interval[0]:.4f} – {interval[1]:.4f}" if interval else ""
            lines.append(f"    {label:<22}{start.get(key, float('nan')):>8.4f}{end[key]:>8.4f}{shown}")
        if s.get("reference") != "none":
            plain = f"loss ln 2 = {LN2:.4f}, " if starts_at_ln2(s.get("loss", "sigmoid")) else ""
            lines.append(f"  (at the start the policy equals the reference: {plain}every margin 0; "
                         "a tie counts as a wrong answer, so accuracy starts at 0)")
        else:
            lines.append("  (reference-free loss: a reward is a scaled per-token mean log-prob of the answer, β·ℓ for "
                         "simpo and λ·ℓ for orpo, so accuracy at the start is the starting model's own preference)")
        if s.get("verdict"):
            lines.append("  " + s["verdict"])
    for item in s.get("probe") or []:  # the answers people read: before and after, side by side
        lines.append(f"  held-out prompt …{shorten(item['prompt'], 70, tail=True)}")
        lines.append(f"    step 0:  {shorten(item['before'], 100)}")
        lines.append(f"    step {item['step']}: {shorten(item['after'], 100)}")
    lines += summary_tail(s)
    return "\n".join(lines)
