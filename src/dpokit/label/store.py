"""The labeling project's database: tables, engine and sessions, opening (and upgrading) a project.

SQLite by default (PROJECT/label.db, WAL, 10 s busy timeout, foreign keys on); PostgreSQL when `--db postgresql://...`
is given to `init` (kept in PROJECT/project.yaml) or to a later command. The schema is owned by the Alembic revisions
in migrations/; `open_project` brings an older project to the newest one.
"""
from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, Optional

import yaml
from sqlalchemy import (Boolean, DateTime, Float, ForeignKey, Index, Integer, MetaData, String, Text, UniqueConstraint,
                        create_engine, event, select, text)
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from ..errors import UserError

DB_FILE = "label.db"
PROJECT_FILE = "project.yaml"
SECRET_FILE = "secret"
BUSY_TIMEOUT_S = 10
URL_HELP = "sqlite:///PATH.db or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"


def now() -> datetime:
    return datetime.now(timezone.utc)


# ---- tables -------------------------------------------------------------------------------------------------------

class Base(DeclarativeBase):
    # Named constraints: a later revision can drop or alter them by name (SQLite's batch mode needs names too).
    metadata = MetaData(naming_convention={"ix": "ix_%(column_0_label)s", "uq": "uq_%(table_name)s_%(column_0_name)s",
                                           "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
                                           "pk": "pk_%(table_name)s"})


class Setting(Base):
    __tablename__ = "settings"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class Prompt(Base):
    __tablename__ = "prompts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    text: Mapped[Optional[str]] = mapped_column(Text)  # a plain-text prompt, or
    messages_json: Mapped[Optional[str]] = mapped_column(Text)  # a conversation: JSON [{role, content}, ...]
    source: Mapped[Optional[str]] = mapped_column(String(500))  # where it came from: "prompts.jsonl:3"
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)

    @property
    def value(self):
        """The prompt as dpokit passes prompts around: a string or a list of messages."""
        return self.text if self.messages_json is None else json.loads(self.messages_json)


class Response(Base):
    __tablename__ = "responses"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"), index=True)
    text: Mapped[str] = mapped_column(Text)
    model: Mapped[Optional[str]] = mapped_column(String(500))  # the model that wrote it (never shown to annotators)
    settings_json: Mapped[Optional[str]] = mapped_column(Text)  # generation settings, JSON
    seed: Mapped[Optional[int]] = mapped_column(Integer)
    truncated: Mapped[bool] = mapped_column(Boolean, default=False)  # cut off by max_new_tokens (no EOS)
    source: Mapped[Optional[str]] = mapped_column(String(500))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Comparison(Base):
    __tablename__ = "comparisons"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # 'pair' | 'rank'
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class ComparisonResponse(Base):
    __tablename__ = "comparison_responses"
    comparison_id: Mapped[int] = mapped_column(ForeignKey("comparisons.id"), primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    response_id: Mapped[int] = mapped_column(ForeignKey("responses.id"))


class Annotator(Base):
    __tablename__ = "annotators"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str] = mapped_column(String(300))
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    failed_logins: Mapped[int] = mapped_column(Integer, default=0)
    last_failed_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Assignment(Base):
    __tablename__ = "assignments"
    __table_args__ = (UniqueConstraint("comparison_id", "annotator_id", name="uq_assignment_once"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    comparison_id: Mapped[int] = mapped_column(ForeignKey("comparisons.id"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    shown_order_json: Mapped[str] = mapped_column(Text)  # response ids left→right (top→bottom), random per assignment
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Judgment(Base):
    __tablename__ = "judgments"
    __table_args__ = (
        # At most one live (not undone) judgment per assignment; undo keeps the row, so nothing is ever deleted.
        Index("uq_live_judgment", "assignment_id", unique=True,
              sqlite_where=text("undone_at IS NULL"), postgresql_where=text("undone_at IS NULL")),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    assignment_id: Mapped[int] = mapped_column(ForeignKey("assignments.id"))
    comparison_id: Mapped[int] = mapped_column(ForeignKey("comparisons.id"), index=True)
    annotator_id: Mapped[int] = mapped_column(ForeignKey("annotators.id"), index=True)
    choice: Mapped[str] = mapped_column(String(16))  # tasks.CHOICES
    ranking_json: Mapped[Optional[str]] = mapped_column(Text)  # rank: response ids best first
    chosen_response_id: Mapped[Optional[int]] = mapped_column(ForeignKey("responses.id"))
    strength: Mapped[Optional[str]] = mapped_column(String(16))  # tasks.STRENGTHS
    reason: Mapped[Optional[str]] = mapped_column(Text)
    edited_text: Mapped[Optional[str]] = mapped_column(Text)  # the annotator's correction of the chosen answer
    seconds: Mapped[Optional[float]] = mapped_column(Float)
    shown_order_json: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    undone_at: Mapped[Optional[datetime]] = mapped_column(DateTime(timezone=True))


# ---- the project --------------------------------------------------------------------------------------------------

class Project:
    """An open labeling project: its folder, database engine and session-signing key."""

    def __init__(self, folder: Path, url: str, engine: Engine, secret_key: str):
        self.folder, self.url, self.engine, self.secret_key = folder, url, engine, secret_key
        self._locking = engine.execution_options(dpokit_lock=True)

    @property
    def name(self) -> str:
        return get_setting(self, "name") or self.folder.name

    @contextmanager
    def session(self, lock: bool = False) -> Iterator[Session]:
        """A Session in one transaction, committed on exit (rolled back on an exception).

        `lock=True` is for check-then-write transactions (assignment, judging): on SQLite it begins with
        BEGIN IMMEDIATE, so two of them never interleave; on PostgreSQL callers take row locks (FOR UPDATE)."""
        with Session(self._locking if lock else self.engine, expire_on_commit=False) as session, session.begin():
            yield session

    def close(self) -> None:
        self.engine.dispose()


def open_project(folder, db: str | None = None, create: bool = False) -> Project:
    """Open the project in `folder` (upgrading its schema to the newest revision); with `create`, make it first.

    `db` overrides the database the project names (PROJECT/project.yaml, else PROJECT/label.db)."""
    folder = Path(folder)
    if create:
        if db is not None:  # a bad URL fails before anything is written
            make_engine(db, source="--db").dispose()
        _create_folder(folder, db)
    elif not (folder / SECRET_FILE).is_file():
        raise UserError(f"{folder}: no labeling project there (no {SECRET_FILE} file); create one with "
                        f"`dpokit label init {folder} ...`")
    recorded = _project_db(folder)
    url = db or recorded
    if url is None:
        if not create and not (folder / DB_FILE).is_file():  # never a silent new, empty database
            raise UserError(f"{folder}: the project's database {DB_FILE} is missing; restore it, or give --db")
        url = f"sqlite:///{(folder / DB_FILE).resolve()}"
    engine = make_engine(url, source="--db" if db else str(folder / PROJECT_FILE) if recorded else None)
    project = Project(folder, url, engine, (folder / SECRET_FILE).read_text(encoding="utf-8").strip())
    try:
        from .migrations import upgrade

        upgrade(engine)
    except OperationalError as e:
        engine.dispose()
        raise UserError(f"{_shown(url)}: cannot use the database ({_first_line(e.orig or e)})") from None
    return project


def _create_folder(folder: Path, db: str | None) -> None:
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder}: is a file; give a folder for the project")
    folder.mkdir(parents=True, exist_ok=True)
    secret = folder / SECRET_FILE
    if not secret.exists():
        _write_private(secret, secrets.token_hex(32) + "\n")
    if db is not None:  # later commands find the database here (0600: the URL may hold a password)
        url = make_url(db)
        if url.get_backend_name() == "sqlite":  # a relative path would move with the working directory
            db = url.set(database=str(Path(url.database).resolve())).render_as_string(hide_password=False)
        _write_private(folder / PROJECT_FILE, yaml.safe_dump({"db": db}))


def _write_private(path: Path, content: str) -> None:
    # 0600 from the first byte: the secret and a database password never sit readable by others
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(content)


def _project_db(folder: Path) -> str | None:
    path = folder / PROJECT_FILE
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read ({_first_line(e)})") from None
    if not isinstance(data, dict) or not isinstance(data.get("db"), str):
        raise UserError(f"{path}: expected a mapping with a 'db' URL ({URL_HELP})")
    return data["db"]


def make_engine(url: str, source: str | None = None) -> Engine:
    """An engine for `url`, connected once so a bad URL fails here as one line naming it."""
    where = f"{source} " if source else ""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UserError(f"{where}{url!r}: not a database URL; give {URL_HELP}") from None
    backend = parsed.get_backend_name()
    if backend == "postgresql" and parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3, not SQLAlchemy's default psycopg2
    elif backend not in ("sqlite", "postgresql"):
        raise UserError(f"{where}{_shown(url)}: unknown database scheme {parsed.drivername!r}; give {URL_HELP}")
    try:
        if backend == "sqlite":
            engine = _sqlite_engine(parsed, where)
        else:
            engine = create_engine(parsed, pool_pre_ping=True, connect_args={"connect_timeout": BUSY_TIMEOUT_S})
        with engine.connect() as connection:
            connection.execute(select(1))
    except (NoSuchModuleError, ModuleNotFoundError) as e:
        raise UserError(f"{where}{_shown(url)}: the database driver is missing ({_first_line(e)}); for PostgreSQL "
                        "install psycopg: pip install 'dpokit[postgresql]'") from None
    except OperationalError as e:
        raise UserError(f"{where}{_shown(url)}: cannot connect ({_first_line(e.orig or e)})") from None
    return engine


def _sqlite_engine(url, where: str = "") -> Engine:
    if url.database in (None, "", ":memory:"):
        raise UserError(f"{where}{url}: an in-memory database keeps nothing; give sqlite:///PATH.db")
    if not Path(url.database).parent.is_dir():
        raise UserError(f"{where}{url}: folder {Path(url.database).parent} does not exist")
    engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_S, "check_same_thread": False})

    @event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record):
        dbapi_connection.isolation_level = None  # we issue BEGIN ourselves (below): pysqlite's own is too late
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(connection):
        # IMMEDIATE takes the write lock at the start, so a check-then-write transaction cannot interleave
        # with another writer (a deferred BEGIN would fail with "database is locked" on upgrade instead).
        connection.exec_driver_sql("BEGIN IMMEDIATE" if connection.get_execution_options().get("dpokit_lock")
                                   else "BEGIN")

    return engine


def _shown(url: str) -> str:
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return repr(url)


def _first_line(e) -> str:
    lines = [line for line in str(e).strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else type(e).__name__


# ---- settings -----------------------------------------------------------------------------------------------------

def get_setting(project: Project, key: str, default: str | None = None) -> str | None:
    with project.session() as session:
        row = session.get(Setting, key)
        return default if row is None else row.value


def set_setting(project: Project, key: str, value) -> None:
    with project.session(lock=True) as session:
        session.merge(Setting(key=key, value=str(value)))


def overlap(project: Project) -> int:
    """k: how many annotators judge each comparison."""
    return int(get_setting(project, "overlap", "2"))
