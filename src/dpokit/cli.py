"""`dpokit <command>`: each command maps to one function. User errors exit 2 with one line, no traceback."""
from __future__ import annotations

import argparse
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
  4    iterate --judge human:PROJECT: the round waits for people's judgments in PROJECT (judge them, then --resume)
  130  interrupted (Ctrl-C)"""

EXIT_WAITING = 4  # not an error: the run continues with --resume once the round is judged


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


def cmd_reward(args) -> int:
    """`dpokit reward`: a Bradley–Terry reward model on preference pairs, through the same loop."""
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch_processes(args.nproc, args.argv)
    from .config import RewardConfig, config_from_args
    from .train.reward import run_reward

    run_reward(config_from_args(RewardConfig, args))
    return 0


def cmd_pipeline(args) -> int:
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return launch_processes(args.nproc, args.argv)
    from .config import config_from_args
    from .pipeline import make_recipe, run_pipeline

    config = config_from_args(args.config_class, args)
    run_pipeline(make_recipe(config, args.config or "config"), overwrite=config.overwrite, resume=config.resume)
    return 0


def cmd_validate(config) -> int:
    from .commands_validate import validate_command

    return validate_command(config)


def cmd_report(config) -> int:
    from pathlib import Path

    from .report import write_html

    page = write_html(Path(config.run))
    print(f"{page.with_name('report.png')}\n{page}")
    return 0


def cmd_generate(config) -> int:
    from .generate import generate_file
    from .models import trained_verbatim

    if config.best_of > 1 or config.judge_ref or config.reward:
        return cmd_best_of(config)
    n = generate_file(config.model, config.prompts, config.output, overwrite=config.overwrite, coh=config.coh,
                      template=not (config.no_chat_template or trained_verbatim(config.model)),
                      max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
                      seed=config.seed, batch_size=config.batch_size)
    print(f"dpokit: wrote {n} completions to {config.output}")
    return 0


def cmd_best_of(config) -> int:
    """`dpokit generate --best-of N`: N samples per prompt, the highest-reward one kept."""
    from .errors import UserError
    from .eval.generation import best_of_file
    from .models import trained_verbatim

    if config.coh:
        raise UserError("--best-of and --coh do not combine; drop one")
    n = best_of_file(config.model, config.prompts, config.output, n=config.best_of, judge_ref=config.judge_ref,
                     reward=config.reward or "implicit", beta=config.beta, overwrite=config.overwrite,
                     template=not (config.no_chat_template or trained_verbatim(config.model)),
                     max_new_tokens=config.max_new_tokens,
                     temperature=config.temperature, top_p=config.top_p, seed=config.seed,
                     batch_size=config.batch_size)
    print(f"dpokit: wrote {n} best-of-{config.best_of} completions to {config.output}")
    return 0


def cmd_eval(config) -> int:
    if config.generate:
        from .eval.generation import generation_command

        return generation_command(config)
    from .eval.preference import preference_command

    return preference_command(config)


def cmd_score(config) -> int:
    from .eval.score import score_command

    return score_command(config)


def cmd_chat(config) -> int:
    from .chat import chat_loop

    return chat_loop(config.model, system=config.system, temperature=config.temperature, top_p=config.top_p,
                     max_new_tokens=config.max_new_tokens, seed=config.seed)


def cmd_export(config) -> int:
    from pathlib import Path

    from .export import describe, export

    print(describe(export(Path(config.source), Path(config.output), merge=config.merge, overwrite=config.overwrite)))
    return 0


def cmd_iterate(config) -> int:
    if config.online:  # one judged batch per optimizer step (OAIF)
        from .train.online import run_online as run
    else:
        from .train.iterate import run_iterate as run

    summary = run(config)
    return EXIT_WAITING if summary.get("waiting") else 0


def cmd_plan(config) -> int:
    from .commands_plan import plan_command

    return plan_command(config)


def cmd_label_init(args) -> int:
    from .config import config_from_args
    from .label.commands import init_command
    from .label.config import LabelInitConfig

    if args.model:  # --model repeats; the config keeps a comma-separated list, as YAML lists become
        args.model = ",".join(args.model)
    return init_command(config_from_args(LabelInitConfig, args))


def cmd_label_add_user(config) -> int:
    from .label.commands import add_user_command

    return add_user_command(config)


def cmd_label_serve(config) -> int:
    from .label.server import serve

    return serve(config)


def cmd_label_export(config) -> int:
    from .label.commands import export_command

    return export_command(config)


LABEL = (  # name, config class (label/config.py), function, help
    ("init", "LabelInitConfig", cmd_label_init, "create a project: candidates imported (--responses) or generated by "
                                                "local models (--prompts, --model), paired or ranked per prompt"),
    ("add-user", "LabelAddUserConfig", cmd_label_add_user, "add an annotator (--admin: also the admin page); the "
                                                           "password is stored as a scrypt hash"),
    ("serve", "LabelServeConfig", cmd_label_serve, "run the labeling web app (127.0.0.1 unless --host says otherwise)"),
    ("export", "LabelExportConfig", cmd_label_export, "write the judged comparisons as preference pairs for dpokit "
                                                      "dpo (margin from strength, origin per comparison)"),
)


TRAINING = (  # name, config class (config.py), help: one loop, over N processes with --nproc
    ("dpo", "DPOConfig", "train a policy with DPO or its family (IPO, cDPO, hinge, robust, ODPO, SimPO, ORPO, KTO) "
                         "on preference pairs. With no arguments: SmolLM2-135M-Instruct on a bundled hh-rlhf sample"),
    ("sft", "SFTConfig", "supervised fine-tuning: loss on answer tokens only (prompt/completion, messages, Alpaca, "
                         "ShareGPT; preference pairs train on their chosen answers)"),
    ("coh", "CoHConfig", "Chain of Hindsight: fine-tune on feedback-conditioned sequences built from preference pairs "
                         "(loss on answers, not on the feedback phrases)"),
    ("reward", "RewardConfig", "train a Bradley–Terry reward model (a 1-logit classification head on --model) on the "
                               "preference pairs dpo reads; final/ is an hf:DIR judge for iterate and eval --generate"),
)
COMMANDS = (  # name, config class (command_config.py), function, help, description
    ("validate", "ValidateConfig", cmd_validate, "check a preference file and report shape, counts and token lengths",
     None),
    ("report", "ReportConfig", cmd_report, "plot a run's metrics (loss, reward accuracy, margins, log-probs) to PNG "
                                           "and an HTML page", None),
    ("generate", "GenerateConfig", cmd_generate, "sample completions for a file of prompts (batched, seeded)",
     "Prompts: JSONL/JSON/CSV/Parquet with a `prompt` field (text or chat messages) or .txt, one prompt per line. "
     "Output: JSONL rows with `prompt` and `completion`."),
    ("eval", "EvalConfig", cmd_eval, "preference accuracy of a model against its reference on pairs, or (--generate) "
                                     "reward, win rate and KL of sampled responses",
     "Pairs: implicit rewards β·(log π − log π_ref), margins, accuracy (ties wrong) and DPO loss per pair → "
     "OUTPUT/pairs.jsonl, OUTPUT/summary.json. --generate: k samples per prompt from model and reference, scored by "
     "--reward → OUTPUT/samples.jsonl."),
    ("score", "ScoreConfig", cmd_score, "rank candidate responses by the implicit reward β·(log π − log π_ref)", None),
    ("chat", "ChatConfig", cmd_chat, "talk to a model in the terminal (/reset clears, /exit or Ctrl-D quits)", None),
    ("export", "ExportConfig", cmd_export, "write a run's model (or a model/adapter folder) as a standalone folder",
     "A LoRA adapter is exported as an adapter (base path made absolute) or, with --merge, merged into a full model; "
     "a full model is re-saved."),
    ("plan", "PlanConfig", cmd_plan, "estimate memory per device and step time of a run on N GPUs (no weights loaded)",
     "Memory per device and step time of a DPO run, from the model's config alone."),
)


def build_parser() -> argparse.ArgumentParser:
    from . import command_config, config
    from .config import add_arguments

    parser = argparse.ArgumentParser(prog="dpokit", description="Align a local language model with DPO, offline.",
                                     epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, text: str, description: str | None = None):
        return sub.add_parser(name, help=text, description=description or text, epilog=EXIT_CODES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)

    for name, cls_name, text in TRAINING:
        command = add(name, text)
        add_arguments(command, getattr(config, cls_name))
        command.add_argument("--nproc", type=int, default=1, help="train with N processes (DDP via accelerate launch; "
                             "batch-size must divide by grad-accum × N)")
        command.set_defaults(func={"dpo": cmd_dpo, "reward": cmd_reward}.get(name, cmd_sft),
                             config_class=getattr(config, cls_name))
    iterate = add("iterate", "online / iterative DPO: rounds of sampling from the policy, judging with a local judge, "
                             "pairing and training", "Each round: K samples per prompt from the current policy, scored "
                             "by --judge, paired (best vs worst by default), DPO on the pairs warm-started from the last "
                             "round against the starting model, and held-out reward, win rate, KL and length.")
    add_arguments(iterate, config.IterateConfig)
    iterate.set_defaults(func=cmd_iterate, config_class=config.IterateConfig, takes_config=True)
    pipeline = add("pipeline", "SFT then DPO in one command, from a recipe (recipes/*.yaml, given as --config); the DPO "
                               "reference is the SFT result")
    add_arguments(pipeline, config.PipelineConfig)
    pipeline.add_argument("--nproc", type=int, default=1, help="run each stage with N processes (DDP via accelerate "
                          "launch)")
    pipeline.set_defaults(func=cmd_pipeline, config_class=config.PipelineConfig)
    for name, cls_name, func, text, description in COMMANDS:
        command = add(name, text, description)
        add_arguments(command, getattr(command_config, cls_name))
        command.set_defaults(func=func, config_class=getattr(command_config, cls_name), takes_config=True)
    add_label_parsers(add("label", "collect preference data in the browser: a self-hosted labeling app (SQLite, or "
                                   "PostgreSQL with --db), exported as pairs for dpo"))
    return parser


def add_label_parsers(label: argparse.ArgumentParser) -> None:
    """`dpokit label init|add-user|serve|export`: subcommands of their own, each with its config class."""
    from .config import add_arguments
    from .label import config as label_config

    sub = label.add_subparsers(dest="label_command", metavar="SUBCOMMAND")
    label.set_defaults(func=lambda args: label.print_help() or 0)
    for name, cls_name, func, text in LABEL:
        cls = getattr(label_config, cls_name)
        command = sub.add_parser(name, help=text, description=text, epilog=EXIT_CODES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(command, cls)
        command.set_defaults(func=func, config_class=cls, takes_config=name != "init")
    init = sub.choices["init"]
    init.add_argument("--model", action="append", metavar="MODEL",
                      help=label_config.LabelInitConfig.__dataclass_fields__["model"].metadata["help"])


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
        if getattr(args, "takes_config", False):  # every command but those that launch processes (--nproc)
            from .config import config_from_args

            code = args.func(config_from_args(args.config_class, args))
        else:
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
