"""Databases for the `dpokit label` tests: SQLite (nothing to start) and a real PostgreSQL server.

The server is Debian's `postgresql` package, started once per test session in a temporary folder on a free port
(as the `postgres` OS user when the tests run as root: initdb refuses root) and stopped at the end; every test gets
a fresh database. Where it cannot start, the PostgreSQL tests skip with the reason.

Use from a test module:  from label_db import label_db, postgres_server  # noqa: F401 (fixtures)
`label_db` yields None for SQLite (the project's own label.db) or a postgresql:// URL to pass as `db`/`--db`.
"""
from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

START_TIMEOUT_S = 60


@dataclass
class PostgresServer:
    folder: Path
    port: int
    run_as: list[str]  # ["runuser", "-u", "postgres", "--"] when we are root, else []
    bin: Path

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def admin(self):
        import psycopg

        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True)

    def create_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        with self.admin() as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        subprocess.run([*self.run_as, str(self.bin / "pg_ctl"), "-D", str(self.folder / "data"), "-m", "immediate",
                        "stop"], capture_output=True, timeout=START_TIMEOUT_S)
        shutil.rmtree(self.folder, ignore_errors=True)


def find_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_postgres() -> PostgresServer | str:
    """A running server, or the reason it could not start."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'psycopg[binary]')"
    bin = find_bin()
    if bin is None:
        return "PostgreSQL is not installed (Debian: apt-get install postgresql)"
    run_as = []
    folder = Path(tempfile.mkdtemp(prefix="dpokit-pg-"))
    if os.geteuid() == 0:  # initdb refuses root: the server runs as the postgres OS user, in a folder it owns
        if shutil.which("runuser") is None:
            return "running as root and runuser is missing, so PostgreSQL cannot run as the postgres user"
        run_as = ["runuser", "-u", "postgres", "--"]
        try:
            shutil.chown(folder, "postgres", "postgres")
        except (LookupError, OSError) as e:
            return f"cannot hand a folder to the postgres OS user ({e})"
    sockets = folder / "sockets"
    steps = [
        [str(bin / "initdb"), "-D", str(folder / "data"), "-U", "postgres", "-A", "trust", "-E", "UTF8",
         "--locale=C", "--no-sync"],
        ["mkdir", str(sockets)],
    ]
    port = free_port()
    options = f"-p {port} -k {sockets} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    steps.append([str(bin / "pg_ctl"), "-D", str(folder / "data"), "-l", str(folder / "server.log"), "-w",
                  "-t", str(START_TIMEOUT_S), "-o", options, "start"])
    for step in steps:
        try:
            done = subprocess.run([*run_as, *step], capture_output=True, text=True, timeout=START_TIMEOUT_S + 10)
        except (OSError, subprocess.TimeoutExpired) as e:
            shutil.rmtree(folder, ignore_errors=True)
            return f"PostgreSQL did not start: {Path(step[0]).name}: {e}"
        if done.returncode != 0:
            log = (folder / "server.log").read_text(errors="replace") if (folder / "server.log").exists() else ""
            why = (done.stderr or done.stdout or log).strip().splitlines()
            shutil.rmtree(folder, ignore_errors=True)
            return f"PostgreSQL did not start: {Path(step[0]).name} failed: {why[-1] if why else done.returncode}"
    return PostgresServer(folder, port, run_as, bin)


@pytest.fixture(scope="session")
def postgres_server():
    server = start_postgres()
    if isinstance(server, str):
        pytest.skip(server)
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "postgresql"])
def label_db(request):
    """None (SQLite: the project's own label.db) or the URL of a fresh PostgreSQL database."""
    if request.param == "sqlite":
        yield None
        return
    server = request.getfixturevalue("postgres_server")
    name = server.create_database()
    yield server.url(name)
    server.drop_database(name)
