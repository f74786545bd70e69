"""The `dpokit label` subcommands at the edge: arguments in, one summary out (the work is in the other modules)."""
from __future__ import annotations

import getpass
import secrets
import sys
from pathlib import Path

from ..errors import UserError
from .config import LabelAddUserConfig, LabelExportConfig, LabelInitConfig
from .store import open_project

MIN_PASSWORD = 8


def init_command(config: LabelInitConfig) -> int:
    from .candidates import init_project

    counts = init_project(config)
    kind = "rankings" if config.ranking else "pairs"
    print(f"dpokit: created {config.project}: {counts['prompts']} prompts, {counts['responses']} responses, "
          f"{counts['comparisons']} comparisons ({kind}), each for {config.overlap} annotators")
    if counts["uncompared_prompts"]:
        print(f"dpokit: {counts['uncompared_prompts']} prompts have fewer than 2 distinct responses and are not "
              "compared")
    if counts["truncated"]:
        print(f"dpokit: {counts['truncated']} responses were cut off by --max-new-tokens (no EOS)")
    print(f"next: dpokit label add-user {config.project} NAME --admin, then dpokit label serve {config.project}")
    return 0


def add_user_command(config: LabelAddUserConfig) -> int:
    from .users import add_user, check_name

    name = check_name(config.name or "")
    project = open_project(config.project, db=config.db)  # a missing project fails before a password is asked
    try:
        password, generated = read_password(config.password_file, name)
        add_user(project, name, password, admin=config.admin)
    finally:
        project.close()
    role = "admin" if config.admin else "annotator"
    print(f"dpokit: added {role} {name!r} to {config.project}")
    if generated:
        print(f"password (shown once): {password}")
    return 0


def read_password(path: str | None, name: str) -> tuple[str, bool]:
    """(password, generated?): from a file's first line, typed twice at a terminal, or generated."""
    if path is not None:
        try:
            lines = Path(path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--password-file {path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
        password = lines[0] if lines else ""
        _check_password(password, f"--password-file {path}: line 1")
        return password, False
    if not sys.stdin.isatty():
        return secrets.token_urlsafe(12), True
    password = getpass.getpass(f"password for {name}: ")
    _check_password(password, "the password")
    if getpass.getpass("again: ") != password:
        raise UserError("the two passwords differ; run add-user again")
    return password, False


def _check_password(password: str, where: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise UserError(f"{where}: a password needs at least {MIN_PASSWORD} characters")


def export_command(config: LabelExportConfig) -> int:
    from .export import describe, export_pairs

    project = open_project(config.project, db=config.db)
    try:
        counts = export_pairs(project, config.output, policy=config.policy, min_annotators=config.min_annotators,
                              ranking="all-pairs" if config.all_pairs else "best-vs-worst",
                              overwrite=config.overwrite)
    finally:
        project.close()
    print(describe(counts, config.output))
    return 0
