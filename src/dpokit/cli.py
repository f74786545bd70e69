"""`dpokit <command>`: each command maps to one function. User errors exit 2 with one line, no traceback."""
from __future__ import annotations

import argparse
import dataclasses
import errno
import os
import sys

from .offline import enforce_offline

DISK_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM}
EXIT_CODES = """exit codes, the same for every command:
  0    done
  1    validate: the file loads, but some rows have problems (listed)
  2    a problem you can fix: a bad flag or config key, bad input (file, line and field named), a folder in use
  3    a NaN/inf loss or gradient stopped training (the last checkpoint is kept)
  130  interrupted (Ctrl-C)"""


def launch_processes(nproc: int, argv: list[str]) -> int:
    """`dpokit dpo --nproc N`: the same command under `accelerate launch` (DDP; gloo on CPU, NCCL on GPUs)."""
    import subprocess

    rest, skip = [], False
    for arg in argv:  # drop --nproc N / --nproc=N, keep everything else as given
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    # --multi_gpu means "several local processes" to accelerate; on a machine without GPUs they use gloo on the CPU.
    # (Not --cpu: with it accelerate 1.x starts a single process whatever --num_processes says.)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(nproc),
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return subprocess.call(command + ["-m", "dpokit", *rest])


def cmd_dpo(args) -> int:
    from pathlib import Path

    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch_processes(args.nproc, args.argv)

    from .config import DPOConfig, config_from_args
    from .train.dpo import run_dpo

    if args.config is None and args.model is None and args.data is None:
        # The embedded default run: a shipped config file, named so nothing is hidden; other flags still apply.
        args.config = str(Path(__file__).resolve().parent / "assets" / "default_run.yaml")
        print(f"dpokit: no --config, --model or --data: running the embedded default ({args.config})", flush=True)
    run_dpo(config_from_args(DPOConfig, args))
    return 0


def cmd_sft(args) -> int:
    """`dpokit sft` and `dpokit coh`: the same loop with the SFT objective (CoH builds its examples from pairs)."""
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch_processes(args.nproc, args.argv)
    from .config import config_from_args
    from .train.sft import run_sft

    run_sft(config_from_args(args.config_class, args))
    return 0


def cmd_pipeline(args) -> int:
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch_processes(args.nproc, args.argv)
    from .pipeline import load_recipe, run_pipeline

    from .errors import UserError

    if args.overwrite and args.resume:
        raise UserError("--resume continues a pipeline and --overwrite deletes it; pick one")
    recipe = load_recipe(args.config, model=args.model, output=args.output)
    run_pipeline(recipe, overwrite=args.overwrite, resume=args.resume)
    return 0


def cmd_validate(args) -> int:
    from .commands_validate import validate_command

    return validate_command(args)


def cmd_report(args) -> int:
    from pathlib import Path

    from .report import write_html

    page = write_html(Path(args.run))
    print(f"{page.with_name('report.png')}\n{page}")
    return 0


def cmd_generate(args) -> int:
    from .generate import generate_file

    if args.best_of > 1 or args.judge_ref or args.reward:
        return cmd_best_of(args)
    n = generate_file(args.model, args.prompts, args.out, overwrite=args.overwrite, coh=args.coh,
                      template=not args.no_chat_template,
                      max_new_tokens=args.max_new_tokens, temperature=args.temperature, top_p=args.top_p,
                      seed=args.seed, batch_size=args.batch_size)
    print(f"dpokit: wrote {n} completions to {args.out}")
    return 0


def cmd_best_of(args) -> int:
    """`dpokit generate --best-of N`: N samples per prompt, the highest-reward one kept."""
    from .errors import UserError
    from .eval.generation import best_of_file

    if args.coh:
        raise UserError("--best-of and --coh do not combine; drop one")
    n = best_of_file(args.model, args.prompts, args.out, n=args.best_of, judge_ref=args.judge_ref,
                     reward=args.reward or "implicit", beta=args.beta, overwrite=args.overwrite,
                     template=not args.no_chat_template, max_new_tokens=args.max_new_tokens,
                     temperature=args.temperature, top_p=args.top_p, seed=args.seed, batch_size=args.batch_size)
    print(f"dpokit: wrote {n} best-of-{args.best_of} completions to {args.out}")
    return 0


def cmd_eval(args) -> int:
    if args.generate:
        from .eval.generation import generation_command

        return generation_command(args)
    from .eval.preference import preference_command

    return preference_command(args)


def cmd_score(args) -> int:
    from .eval.score import score_command

    return score_command(args)


def cmd_chat(args) -> int:
    from .chat import chat_loop

    return chat_loop(args.model, system=args.system, temperature=args.temperature, top_p=args.top_p,
                     max_new_tokens=args.max_new_tokens, seed=args.seed)


def cmd_export(args) -> int:
    from pathlib import Path

    from .export import describe, export

    print(describe(export(Path(args.source), Path(args.out), merge=args.merge, overwrite=args.overwrite)))
    return 0


def cmd_plan(args) -> int:
    from .commands_plan import plan_command

    return plan_command(args)


def add_reading_arguments(parser, default: str) -> None:
    """--columns and --pairs: how rows of other shapes are read, the same in every command that reads pairs."""
    from .config import TrainConfig
    from .data.lists import POLICIES

    help_of = {f.name: f.metadata["help"] for f in dataclasses.fields(TrainConfig)}
    parser.add_argument("--columns", default=None, metavar="COLUMNS", help=f"{help_of['columns']} ({default})")
    parser.add_argument("--pairs", default=None, choices=POLICIES,
                        help=f"{help_of['pairs']} (best-vs-worst when not set; {default})")


def add_eval_parsers(sub) -> None:
    """`dpokit eval` (preference accuracy, or --generate: sampled reward, win rate, KL) and `dpokit score`."""
    ev = sub.add_parser("eval", help="preference accuracy of a model against its reference on pairs, or (--generate) "
                                     "reward, win rate and KL of sampled responses",
                        description="Pairs: implicit rewards β·(log π − log π_ref), margins, accuracy (ties wrong) "
                                    "and DPO loss per pair → OUT/pairs.jsonl, OUT/summary.json. --generate: k samples "
                                    "per prompt from model and reference, scored by --reward → OUT/samples.jsonl.")
    ev.add_argument("--model", required=True, help="model folder, LoRA adapter folder, embedded name, or a run folder "
                    "(its final/, its reference, its settings)")
    ev.add_argument("--ref", default=None, help="reference model (default for a run folder: its --ref, else the "
                    "model it started from)")
    ev.add_argument("--data", default=None, help="preference pairs in any shape `dpokit dpo` takes, or "
                    "bundled:hh-rlhf-harmless (default for a run: its data)")
    add_reading_arguments(ev, "default for a run: its own")
    ev.add_argument("--split", default="all", choices=("all", "heldout", "train"), help="heldout / train: the run's "
                    "by-prompt split, reproduced from its config.yaml (--model must be a run folder)")
    ev.add_argument("--beta", type=float, default=None, help="β of the implicit reward (default: the run's, else 0.1)")
    ev.add_argument("--output", "--out", dest="out", default=None, help="output folder (default RUN/eval-SPLIT or RUN/eval-generate for a "
                    "run, else eval-SPLIT-MODELNAME); never overwritten without --overwrite")
    ev.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    ev.add_argument("--max-length", type=int, default=None, help="as in dpo (default: the run's, else 512)")
    ev.add_argument("--max-prompt-length", type=int, default=None, help="as in dpo (default: the run's, else 256)")
    ev.add_argument("--batch-size", type=int, default=8, help="pairs (or samples) per forward pass")
    ev.add_argument("--layout", default="shared", choices=("shared", "padded"), help="batch layout (same numbers)")
    ev.add_argument("--skip-invalid", action="store_true", help="drop invalid rows instead of stopping")
    ev.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                    help="default: float32 on CPU, bfloat16 on GPUs that support it")
    ev.add_argument("--allow-pickle", action="store_true", help="allow pickle (.bin) model weights")
    ev.add_argument("--generate", action="store_true", help="generation eval: sample, score with --reward, compare")
    ev.add_argument("--prompts", default=None, help="--generate: prompts file (as for dpokit generate); or use --data")
    ev.add_argument("--max-prompts", type=int, default=None, help="--generate: use the first N prompts")
    ev.add_argument("--k", type=int, default=4, help="--generate: samples per prompt from each model")
    ev.add_argument("--reward", default="implicit", help="--generate: hf:PATH (sequence classifier), "
                    "py:MODULE:FUNCTION, or implicit (default)")
    ev.add_argument("--temperature", type=float, default=1.0)
    ev.add_argument("--top-p", type=float, default=1.0)
    ev.add_argument("--seed", type=int, default=0, help="both models sample with this seed")
    ev.add_argument("--max-new-tokens", type=int, default=64)
    ev.add_argument("--no-chat-template", action="store_true", help="--prompts: text prompts as plain text "
                    "(prompts from --data are always plain text, as training saw them)")
    ev.set_defaults(func=cmd_eval)
    score = sub.add_parser("score", help="rank candidate responses by the implicit reward β·(log π − log π_ref)")
    score.add_argument("--model", required=True, help="model folder, LoRA adapter folder or run folder")
    score.add_argument("--ref", default=None, help="reference model (default for a run folder: its reference)")
    score.add_argument("--prompt", default=None, help="the prompt (plain text, as training treats text prompts)")
    score.add_argument("--candidates", default=None, help=".txt (one per line) or JSONL of candidate responses")
    score.add_argument("--candidates-jsonl", default=None, help="rows {prompt, candidates: [...]} (prompt may be "
                       "chat messages)")
    score.add_argument("--beta", type=float, default=None, help="β (default: the run's, else 0.1)")
    score.add_argument("--output", "--out", dest="out", default="scores.jsonl", help="JSONL of ranked candidates (default scores.jsonl)")
    score.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    score.add_argument("--max-length", type=int, default=512)
    score.add_argument("--max-prompt-length", type=int, default=256)
    score.add_argument("--batch-size", type=int, default=8)
    score.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"))
    score.add_argument("--allow-pickle", action="store_true")
    score.set_defaults(func=cmd_score)


def build_parser() -> argparse.ArgumentParser:
    from .config import DPOConfig, add_arguments

    parser = argparse.ArgumentParser(prog="dpokit", description="Align a local language model with DPO, offline.",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    dpo = sub.add_parser("dpo", help="train a policy with DPO (or IPO, cDPO, hinge, robust, ODPO) on preference pairs",
                         description="Train with a preference loss. With no arguments: SmolLM2-135M-Instruct on a "
                                     "bundled hh-rlhf sample.")
    add_arguments(dpo, DPOConfig)
    dpo.add_argument("--nproc", type=int, default=1, help="train with N processes (DDP via accelerate launch; "
                     "batch-size must divide by grad-accum × N)")
    dpo.set_defaults(func=cmd_dpo)
    from .config import CoHConfig, SFTConfig

    for name, cls, text in (
            ("sft", SFTConfig, "supervised fine-tuning: loss on answer tokens only (prompt/completion, messages, "
                               "Alpaca, ShareGPT; preference pairs train on their chosen answers)"),
            ("coh", CoHConfig, "Chain of Hindsight: fine-tune on feedback-conditioned sequences built from "
                               "preference pairs (loss on answers, not on the feedback phrases)")):
        command = sub.add_parser(name, help=text, description=text)
        add_arguments(command, cls)
        command.add_argument("--nproc", type=int, default=1, help="train with N processes (DDP via accelerate launch)")
        command.set_defaults(func=cmd_sft, config_class=cls)
    pipeline = sub.add_parser("pipeline", help="SFT then DPO in one command, from a recipe (recipes/*.yaml); the DPO "
                                               "reference is the SFT result")
    pipeline.add_argument("--config", required=True, help="recipe YAML: model, output, sft: {...}, dpo: {...}")
    pipeline.add_argument("--model", default=None, help="starting model (overrides the recipe's)")
    pipeline.add_argument("--output", default=None, help="pipeline folder (overrides the recipe's)")
    pipeline.add_argument("--overwrite", action="store_true", help="replace the stages' folders if in use")
    pipeline.add_argument("--resume", action="store_true", help="keep finished stages, continue an unfinished one")
    pipeline.add_argument("--nproc", type=int, default=1, help="run each stage with N processes (DDP via accelerate launch)")
    pipeline.set_defaults(func=cmd_pipeline)
    validate = sub.add_parser("validate", help="check a preference file and report shape, counts and token lengths")
    validate.add_argument("path", help="data file or save_to_disk folder")
    validate.add_argument("--model", default=None, help="tokenizer for token-length percentiles (default: embedded model)")
    validate.add_argument("--max-length", type=int, default=512, help="as in dpo: the truncation counts shown are "
                          "for this max_length (default 512)")
    validate.add_argument("--max-prompt-length", type=int, default=256, help="as in dpo (default 256)")
    validate.add_argument("--no-tokens", action="store_true", help="skip token statistics (no tokenizer needed)")
    add_reading_arguments(validate, "the first mapped row and the first pair are printed, to check a mapping")
    validate.set_defaults(func=cmd_validate)
    report = sub.add_parser("report", help="plot a run's metrics (loss, reward accuracy, margins, log-probs) to PNG and an HTML page")
    report.add_argument("run", help="run folder (the --output of dpokit dpo)")
    report.set_defaults(func=cmd_report)
    generate = sub.add_parser("generate", help="sample completions for a file of prompts (batched, seeded)",
                              description="Prompts: JSONL/JSON/CSV/Parquet with a `prompt` field (text or chat "
                                          "messages) or .txt, one prompt per line. Output: JSONL rows with "
                                          "`prompt` and `completion`.")
    generate.add_argument("--model", required=True, help="model folder, LoRA adapter folder, run folder or .gguf")
    generate.add_argument("--prompts", required=True, help="prompts file (.jsonl with a `prompt` field, or .txt)")
    generate.add_argument("--output", "--out", dest="out", required=True, help="output JSONL file (never overwritten without --overwrite)")
    generate.add_argument("--max-new-tokens", type=int, default=128)
    generate.add_argument("--temperature", type=float, default=0.7, help="0: greedy")
    generate.add_argument("--top-p", type=float, default=1.0)
    generate.add_argument("--seed", type=int, default=0, help="same seed, same outputs")
    generate.add_argument("--batch-size", type=int, default=8)
    generate.add_argument("--coh", action="store_true", help="Chain of Hindsight model: ask for the helpful answer "
                          "(phrases from the model's dpokit_coh.json) and cut where the unhelpful one begins")
    generate.add_argument("--no-chat-template", action="store_true", help="text prompts as plain text, as "
                          "training treats plain-text pairs (chat-message prompts still use the template)")
    generate.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    generate.add_argument("--best-of", type=int, default=1, metavar="N", help="sample N per prompt and keep the one "
                          "with the highest reward (rows record all N scores)")
    generate.add_argument("--judge-ref", default=None, help="with --best-of: the reference of the implicit reward "
                          "β·(log π − log π_ref) (default for a run folder: its reference)")
    generate.add_argument("--reward", default=None, help="with --best-of: hf:PATH, py:MODULE:FUNCTION or implicit "
                          "(default)")
    generate.add_argument("--beta", type=float, default=0.1, help="β of the implicit reward")
    generate.set_defaults(func=cmd_generate)
    add_eval_parsers(sub)
    chat = sub.add_parser("chat", help="talk to a model in the terminal (/reset clears, /exit or Ctrl-D quits)")
    chat.add_argument("--model", required=True, help="model folder, LoRA adapter folder, run folder or .gguf")
    chat.add_argument("--system", default=None, help="system message kept at the top of the conversation")
    chat.add_argument("--temperature", type=float, default=0.7, help="0: greedy")
    chat.add_argument("--top-p", type=float, default=1.0)
    chat.add_argument("--max-new-tokens", type=int, default=256)
    chat.add_argument("--seed", type=int, default=0)
    chat.set_defaults(func=cmd_chat)
    export = sub.add_parser("export", help="write a run's model (or a model/adapter folder) as a standalone folder",
                            description="A LoRA adapter is exported as an adapter (base path made absolute) or, "
                                        "with --merge, merged into a full model; a full model is re-saved.")
    export.add_argument("source", help="run folder (its final/ is used) or model / adapter folder")
    export.add_argument("--output", "--out", dest="out", required=True, help="folder to write (written whole: OUT.tmp, then renamed)")
    export.add_argument("--merge", action="store_true", help="merge a LoRA adapter into its base model")
    export.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    export.set_defaults(func=cmd_export)
    plan = sub.add_parser("plan", help="estimate memory per device and step time of a run on N GPUs (no weights loaded)",
                          description="Memory per device and step time of a DPO run, from the model's config alone.")
    from .commands_plan import add_plan_arguments

    add_plan_arguments(plan)
    plan.set_defaults(func=cmd_plan)
    return parser


def main(argv: list[str] | None = None) -> int:
    enforce_offline()  # already done by `import dpokit`; repeated so the guarantee sits where it is promised
    from .errors import UserError

    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # our own bar shows what matters
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv)
    args.argv = argv
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    finished = False
    try:
        code = args.func(args)
        finished = True
        return code
    except UserError as e:
        print(f"dpokit: error: {e}", file=sys.stderr)
        return e.exit_code
    except OSError as e:
        if e.errno not in DISK_ERRORS:
            raise
        where = f" {e.filename}" if e.filename else ""
        print(f"dpokit: error: cannot write{where}: {e.strerror}; checkpoints are written whole or not at all, so the "
              "last complete one is intact (free space or choose another --output, then --resume)", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dpokit: interrupted", file=sys.stderr)
        return 130
    finally:
        leave_process_group(wait=finished)


def leave_process_group(wait: bool) -> None:
    """Under `accelerate launch`, every rank leaves together and tears its process group down before exiting.

    A rank that simply exits while another still writes the final model dies in gloo's static teardown
    ("terminate called without an active exception", SIGABRT), and the launcher then kills the writer."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return
    if wait:  # after an error the other ranks may never arrive
        dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
