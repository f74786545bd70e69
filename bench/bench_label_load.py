"""Load on `dpokit label serve`: 20 annotators at once submit 2,000 judgments over HTTP, on SQLite and PostgreSQL,
then the same with the server killed (`kill -9`) and restarted twice mid-run. Prints errors, judgments acknowledged
against judgments in the database (and any acknowledged one missing), and p50/p95 latency of a judgment's POST.

    python bench/bench_label_load.py [--annotators 20] [--judgments 2000] [--kills 2] [--no-postgres]

A real server process on 127.0.0.1; httpx clients in threads, each logged in as its own annotator. A client that
loses its connection (the server was killed) retries once the server is back; a POST whose answer was lost is not
counted as acknowledged (the server may or may not have stored it; the next try is refused as already judged).
A client shown "All done" before its share, while comparisons are left, counts it and asks again (at most 50 times).
PostgreSQL is Debian's server started the way the tests start it (tests/integration/label_db.py); without it those
rows are skipped with the reason.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))
PASSWORD = "load-test-password"
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
ASSIGNMENT = re.compile(r'name="assignment_id" value="(\d+)"')
EARLY_DONE_TRIES = 50  # a client told "All done" before its share asks again this often, then gives up
RETRYABLE = (httpx.TransportError,)  # refused, reset, closed mid-answer: the server is down or restarting


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_project(folder: Path, db: str | None, comparisons: int, annotators: int) -> None:
    """`dpokit label init` and `add-user`, through the real CLI in this process."""
    from dpokit.cli import main

    rows = folder.parent / "rows.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"Question {i}: which answer is better?",
                                        "responses": [f"Answer {i} one.", f"Answer {i} two."]}) + "\n"
                            for i in range(comparisons)))
    password = folder.parent / "password"
    password.write_text(PASSWORD + "\n")
    db_args = ["--db", db] if db else []
    assert main(["label", "init", str(folder), "--responses", str(rows), "--overlap", "2", *db_args]) == 0
    for i in range(annotators):
        assert main(["label", "add-user", str(folder), f"a{i:02d}", "--password-file", str(password), *db_args]) == 0


class Server:
    """`dpokit label serve` in its own process; kill() is SIGKILL, no goodbye."""

    def __init__(self, folder: Path, db: str | None):
        self.folder, self.db, self.port, self.process = folder, db, free_port(), None
        self.base = f"http://127.0.0.1:{self.port}"

    def start(self) -> float:
        begin = time.perf_counter()
        command = [sys.executable, "-m", "dpokit", "label", "serve", str(self.folder), "--port", str(self.port)]
        self.process = subprocess.Popen(command + (["--db", self.db] if self.db else []), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE, env={**os.environ, "OMP_NUM_THREADS": "1"})
        while True:
            try:
                httpx.get(self.base + "/login", timeout=2)
                return time.perf_counter() - begin
            except httpx.TransportError:
                if self.process.poll() is not None:
                    raise SystemExit(f"server died: {self.process.stderr.read().decode()[-2000:]}")
                time.sleep(0.05)

    def kill(self) -> None:
        os.kill(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


class Tally:
    """What the clients saw, shared between their threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.acknowledged: list[int] = []  # assignment ids answered 303
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self.retries = 0
        self.refused_after_retry = 0  # 409 on a POST retried after its answer was lost
        self.early_done = 0  # "All done" shown while the client still had judgments to give and work was left

    def count(self) -> int:
        with self.lock:
            return len(self.acknowledged)


def with_retries(tally: Tally, step):
    """Run `step` until the server answers; connection failures wait and try again (the server is restarting)."""
    for _ in range(600):
        try:
            return step()
        except RETRYABLE:
            with tally.lock:
                tally.retries += 1
            time.sleep(0.1)
    raise RuntimeError("the server did not come back within a minute")


def annotate(base: str, name: str, quota: int, tally: Tally, stop: threading.Event) -> None:
    import random

    rng = random.Random(name)
    with httpx.Client(base_url=base, timeout=60, follow_redirects=False) as client:
        def log_in():
            token = CSRF.search(client.get("/login").text).group(1)
            answer = client.post("/login", data={"csrf": token, "name": name, "password": PASSWORD})
            if answer.status_code != 303:
                raise RuntimeError(f"{name}: log-in answered {answer.status_code}")

        with_retries(tally, log_in)
        done, lost_answer, early = 0, False, 0
        while done < quota and not stop.is_set():
            page = with_retries(tally, lambda: client.get("/task"))
            found = ASSIGNMENT.search(page.text)
            if page.status_code != 200 or found is None:
                if "All done" not in page.text:
                    with tally.lock:
                        tally.errors.append(f"{name}: GET /task {page.status_code}")
                    return
                with tally.lock:
                    tally.early_done += 1
                early += 1
                if early > EARLY_DONE_TRIES:
                    return
                time.sleep(0.2)  # there were comparisons left: ask again
                continue
            assignment = int(found.group(1))
            form = {"csrf": CSRF.search(page.text).group(1), "assignment_id": str(assignment),
                    "choice": rng.choice(["left", "right", "left", "tie"]), "seconds": f"{rng.uniform(2, 30):.2f}"}
            begin = time.perf_counter()
            try:
                answer = client.post("/judge", data=form)
            except RETRYABLE:
                lost_answer = True  # stored or not: unknown, so not acknowledged; the page will tell
                with tally.lock:
                    tally.retries += 1
                time.sleep(0.1)
                continue
            elapsed = time.perf_counter() - begin
            with tally.lock:
                if answer.status_code == 303:
                    tally.acknowledged.append(assignment)
                    tally.latencies.append(elapsed)
                    done += 1
                elif answer.status_code == 409 and lost_answer:
                    tally.refused_after_retry += 1
                else:
                    tally.errors.append(f"{name}: POST /judge {answer.status_code} {answer.text[:100]}")
            lost_answer = False


def live_assignments(folder: Path, db: str | None) -> set[int]:
    from sqlalchemy import text

    from dpokit.label.store import open_project

    project = open_project(folder, db=db)
    try:
        with project.session() as session:
            return {r[0] for r in session.execute(text("SELECT assignment_id FROM judgments WHERE undone_at IS NULL"))}
    finally:
        project.close()


def run(backend: str, db: str | None, args, kills: int) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"label-load-{backend}-"))
    folder = work / "project"
    per_annotator = args.judgments // args.annotators
    make_project(folder, db, comparisons=args.judgments // 2 + args.annotators * 5, annotators=args.annotators)
    server = Server(folder, db)
    server.start()
    tally, stop = Tally(), threading.Event()
    threads = [threading.Thread(target=annotate, args=(server.base, f"a{i:02d}", per_annotator, tally, stop))
               for i in range(args.annotators)]
    begin = time.perf_counter()
    for thread in threads:
        thread.start()
    restarts = []
    for k in range(kills):  # kill at evenly spaced points of the run, restart at once
        target = args.judgments * (k + 1) // (kills + 1)
        while tally.count() < target and any(t.is_alive() for t in threads):
            time.sleep(0.02)
        server.kill()
        restarts.append(server.start())
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - begin
    server.stop()
    stored = live_assignments(folder, db)
    acked = set(tally.acknowledged)
    latencies = sorted(tally.latencies)
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [float("nan")] * 99
    return {"backend": backend, "kills": kills, "acknowledged": len(tally.acknowledged), "in_db": len(stored),
            "lost": len(acked - stored), "unacknowledged_stored": len(stored - acked),
            "errors": len(tally.errors), "first_errors": tally.errors[:3],
            "retries": tally.retries, "refused_after_retry": tally.refused_after_retry,
            "early_done": tally.early_done,
            "p50_ms": 1000 * q[49], "p95_ms": 1000 * q[94], "wall_s": wall,
            "per_s": len(tally.acknowledged) / wall, "restart_s": restarts}


def table(results: list[dict]) -> str:
    columns = [("backend", "backend", "{}"), ("kills", "kill -9", "{}"), ("acknowledged", "acked", "{}"),
               ("in_db", "in db", "{}"), ("lost", "acked lost", "{}"),
               ("unacknowledged_stored", "stored, answer lost", "{}"), ("errors", "errors", "{}"),
               ("retries", "retries", "{}"), ("refused_after_retry", "409 after lost answer", "{}"),
               ("early_done", "early 'All done'", "{}"), ("p50_ms", "p50 ms", "{:.1f}"),
               ("p95_ms", "p95 ms", "{:.1f}"), ("per_s", "judgments/s", "{:.0f}"), ("wall_s", "wall s", "{:.1f}")]
    names = [name for _, name, _ in columns]
    cells = [names] + [[fmt.format(r[key]) for key, _, fmt in columns] for r in results]
    widths = [max(len(row[i]) for row in cells) for i in range(len(names))]
    lines = [" | ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--annotators", type=int, default=20)
    parser.add_argument("--judgments", type=int, default=2000)
    parser.add_argument("--kills", type=int, default=2, help="kill -9 and restarts in the second run of each backend")
    parser.add_argument("--no-postgres", action="store_true")
    args = parser.parse_args()
    backends = [("sqlite", None)]
    server = None
    if not args.no_postgres:
        from label_db import start_postgres

        server = start_postgres()
        if isinstance(server, str):
            print(f"postgresql: skipped ({server})")
            server = None
        else:
            backends.append(("postgresql", server))
    results = []
    try:
        for backend, pg in backends:
            for kills in (0, args.kills):
                db = pg.url(pg.create_database()) if pg else None
                result = run(backend, db, args, kills)
                print(json.dumps(result), flush=True)
                results.append(result)
    finally:
        if server is not None:
            server.stop()
    print()
    print(f"{args.annotators} annotators, {args.judgments} judgments each run, one `dpokit label serve` process; "
          f"cpus: {os.cpu_count()}")
    print(table(results))
    bad = [r for r in results if r["lost"] or (r["kills"] == 0 and r["errors"]) or r["in_db"] < r["acknowledged"]]
    print("nothing acknowledged was lost" if not bad else f"PROBLEMS in {len(bad)} runs")


if __name__ == "__main__":
    main()
