"""Alembic, run from code: the schema of a labeling project is the newest revision in versions/.

A new release that changes store.py's tables adds a revision here (`alembic revision --autogenerate` against a
project, or by hand); `open_project` then upgrades every older project it opens. No alembic.ini: the Config is built
here, with this folder as the script location.
"""
from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

HERE = Path(__file__).resolve().parent


def alembic_config(connection=None) -> Config:
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    return config


def head() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current(connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(engine, revision: str = "head") -> None:
    """Bring the database to `revision` (a no-op read when it is already there)."""
    with engine.connect() as connection:
        if revision == "head" and current(connection) == head():
            return
    with engine.begin() as connection:  # one transaction: DDL included on PostgreSQL and SQLite
        command.upgrade(alembic_config(connection), revision)
