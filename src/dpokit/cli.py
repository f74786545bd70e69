"""`dpokit <command>`: each command maps to one function. User errors exit 2 with one line, no traceback."""
from __future__ import annotations

import argparse
import errno
import os
import sys

from .offline import enforce_offline

DISK_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM}


def launch_processes(nproc: int, argv: list[str]) -> int:
    """`dpokit dpo --nproc N`: the same command under `accelerate launch` (DDP; gloo on CPU, NCCL on GPUs)."""
    import subprocess

    import torch

    rest, skip = [], False
    for arg in argv:  # drop --nproc N / --nproc=N, keep everything else as given
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            rest.append(arg)
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(nproc), "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no"]
    command += [] if torch.cuda.is_available() else ["--cpu"]
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


def cmd_validate(args) -> int:
    from .commands_validate import validate_command

    return validate_command(args)


def cmd_report(args) -> int:
    from pathlib import Path

    from .report import plot_run

    print(plot_run(Path(args.run)))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .config import DPOConfig, add_arguments

    parser = argparse.ArgumentParser(prog="dpokit", description="Align a local language model with DPO, offline.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    dpo = sub.add_parser("dpo", help="train a policy with DPO (or IPO, cDPO, hinge, robust, ODPO) on preference pairs",
                         description="Train with a preference loss. With no arguments: SmolLM2-135M-Instruct on a "
                                     "bundled hh-rlhf sample.")
    add_arguments(dpo, DPOConfig)
    dpo.add_argument("--nproc", type=int, default=1, help="train with N processes (DDP via accelerate launch; "
                     "batch-size must divide by grad-accum × N)")
    dpo.set_defaults(func=cmd_dpo)
    validate = sub.add_parser("validate", help="check a preference file and report shape, counts and token lengths")
    validate.add_argument("path", help="data file or save_to_disk folder")
    validate.add_argument("--model", default=None, help="tokenizer for token-length percentiles (default: embedded model)")
    validate.add_argument("--max-length", type=int, default=512)
    validate.add_argument("--max-prompt-length", type=int, default=256)
    validate.add_argument("--no-tokens", action="store_true", help="skip token statistics (no tokenizer needed)")
    validate.set_defaults(func=cmd_validate)
    report = sub.add_parser("report", help="plot a run's metrics (loss, reward accuracy, margins, log-probs) to PNG")
    report.add_argument("run", help="run folder (the --output of dpokit dpo)")
    report.set_defaults(func=cmd_report)
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
    try:
        return args.func(args)
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


if __name__ == "__main__":
    sys.exit(main())
