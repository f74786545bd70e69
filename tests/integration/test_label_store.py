"""`dpokit label`'s store on SQLite and on a real PostgreSQL server (the label_db fixture, conftest.py): projects,
import and generation, annotators, assignment under races, undo, statistics, export policies, and the one-line errors
of bad input."""
import json
import stat
import threading
from pathlib import Path

import pytest
from sqlalchemy import select, text

from dpokit.cli import main
from dpokit.errors import DataError, UserError
from dpokit.label import store
from dpokit.label.candidates import init_project, read_responses
from dpokit.label.config import LabelInitConfig
from dpokit.label.export import export_rows
from dpokit.label.stats import admin_summary
from dpokit.label.tasks import TaskError, next_task, record_judgment, undo_last
from dpokit.label.users import add_user, check_login, failed_logins, get_annotator

PROMPTS = [f"Question {i}?" for i in range(4)]


def write_jsonl(path: Path, rows) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def generate_rows():
    """What `dpokit generate` writes, twice (two models): rows of one prompt are grouped on import."""
    return [{"prompt": p, "completion": f"{model} answers {i}", "model": model}
            for model in ("m1", "m2") for i, p in enumerate(PROMPTS)]


def make_project(tmp_path, db, rows=None, **settings):
    folder = tmp_path / "proj"
    data = write_jsonl(tmp_path / "responses.jsonl", rows or generate_rows())
    init_project(LabelInitConfig(project=str(folder), responses=str(data), db=db, **settings))
    return store.open_project(folder)


@pytest.fixture
def project(tmp_path, label_db):
    project = make_project(tmp_path, label_db)
    yield project
    project.close()


def users(project, *names):
    return [add_user(project, name, "password1") for name in names]


def choose(task, text_wanted):
    """'left' or 'right': the side on which `text_wanted` is shown."""
    return "left" if task.responses[0].text == text_wanted else "right"


def count(project, sql):
    with project.session() as session:
        return session.execute(text(sql)).all()


# ---- the project and its schema -----------------------------------------------------------------------------------

def test_fresh_project_is_at_head_and_the_models_match_the_migrations(project):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from dpokit.label.migrations import current, head

    with project.engine.connect() as connection:
        assert current(connection) == head() == "0001"
        assert compare_metadata(MigrationContext.configure(connection), store.Base.metadata) == []


def test_an_older_project_is_upgraded_when_opened(tmp_path, label_db, monkeypatch):
    """A project made at revision 0001 gains a later revision's column when a newer dpokit opens it; its data stays.
    The later revision is written for this test only, into a copy of the migrations folder."""
    import shutil

    from dpokit.label import migrations

    project = make_project(tmp_path, label_db)
    users(project, "alice")
    project.close()
    copy = tmp_path / "migrations"
    shutil.copytree(migrations.HERE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    (copy / "versions" / "0002_test.py").write_text(
        'from alembic import op\nimport sqlalchemy as sa\nrevision = "0002"\ndown_revision = "0001"\n'
        "branch_labels = depends_on = None\n\n\ndef upgrade():\n"
        '    op.add_column("annotators", sa.Column("email", sa.String(200), nullable=True))\n')
    monkeypatch.setattr(migrations, "HERE", copy)
    reopened = store.open_project(tmp_path / "proj")
    with reopened.engine.connect() as connection:
        assert migrations.current(connection) == "0002"
        assert connection.execute(text("SELECT name, email FROM annotators")).all() == [("alice", None)]
    reopened.close()


def test_init_imports_grouped_rows_and_response_lists_and_keeps_settings(tmp_path, label_db):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <b>there</b>"}]
    rows = generate_rows() + [{"prompt": chat, "responses": ["Hello.", {"text": "Hey.", "model": "m3"}, "Hello."]}]
    guidelines = tmp_path / "guide.md"
    guidelines.write_text("# Prefer *short* answers\n", encoding="utf-8")
    project = make_project(tmp_path, label_db, rows, overlap=3, name="demo", guidelines=str(guidelines))
    with project.session() as session:
        prompts = session.scalars(select(store.Prompt).order_by(store.Prompt.id)).all()
        assert [p.value for p in prompts] == PROMPTS + [chat]
        assert prompts[0].source == "responses.jsonl:1" and prompts[4].source == "responses.jsonl:9"
        responses = session.scalars(select(store.Response).where(store.Response.prompt_id == prompts[0].id)).all()
        assert [(r.text, r.model) for r in responses] == [("m1 answers 0", "m1"), ("m2 answers 0", "m2")]
        kinds = session.scalars(select(store.Comparison.kind)).all()
    # 4 prompts × 1 pair, and the conversation's 2 distinct answers ("Hello." twice is compared once)
    assert kinds == ["pair"] * 5
    assert store.get_setting(project, "name") == "demo" and store.overlap(project) == 3
    assert store.get_setting(project, "guidelines") == "# Prefer *short* answers\n"
    secret = project.folder / "secret"
    assert stat.S_IMODE(secret.stat().st_mode) == 0o600 and len(project.secret_key) == 64
    if label_db is not None:  # the URL is kept for later commands, readable by the owner only
        saved = project.folder / "project.yaml"
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600 and label_db in saved.read_text()
    else:
        assert (project.folder / "label.db").is_file() and not (project.folder / "project.yaml").exists()
    project.close()
    with pytest.raises(UserError, match="already holds a labeling project"):
        make_project(tmp_path, label_db)


def test_ranking_mode_makes_one_ranking_per_prompt(tmp_path, label_db):
    rows = [{"prompt": "Q", "responses": ["a", "b", "c", "b"]}, {"prompt": "R", "responses": ["x", "y"]}]
    project = make_project(tmp_path, label_db, rows, ranking=True)
    with project.session() as session:
        members = session.execute(select(store.ComparisonResponse.comparison_id, store.Response.text)
                                  .join(store.Response).order_by(store.ComparisonResponse.comparison_id,
                                                                 store.ComparisonResponse.position)).all()
        kinds = session.scalars(select(store.Comparison.kind).order_by(store.Comparison.id)).all()
    assert kinds == ["rank", "pair"]  # two answers are a pair
    assert [t for c, t in members if c == 1] == ["a", "b", "c"]
    project.close()


def test_pairs_are_capped_per_prompt(tmp_path):
    rows = [{"prompt": "Q", "responses": [f"answer {i}" for i in range(6)]}]  # 15 possible pairs
    project = make_project(tmp_path, None, rows, max_pairs_per_prompt=6)
    with project.session() as session:
        pairs = session.execute(text("SELECT comparison_id, response_id FROM comparison_responses")).all()
    shown = {r for _, r in pairs}
    assert len(pairs) == 12 and len(shown) == 6  # 6 pairs, every answer in at least one
    project.close()


def test_generate_candidates_from_a_tiny_model(tmp_path, tiny_model_dir, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("Hello there\nWhat is DPO?\n", encoding="utf-8")
    assert main(["label", "init", str(tmp_path / "proj"), "--prompts", str(prompts), "--model", str(tiny_model_dir),
                 "--model", str(tiny_model_dir), "--samples-per-model", "2", "--max-new-tokens", "4", "--seed", "7",
                 "--temperature", "1.0"]) == 0
    assert "2 prompts, 8 responses" in capsys.readouterr().out
    project = store.open_project(tmp_path / "proj")
    with project.session() as session:
        responses = session.scalars(select(store.Response).order_by(store.Response.id)).all()
    assert [r.seed for r in responses if r.prompt_id == 1] == [7, 8, 7, 8]
    assert {r.model for r in responses} == {str(tiny_model_dir)}
    settings = json.loads(responses[0].settings_json)
    assert settings["temperature"] == 1.0 and settings["max_new_tokens"] == 4
    # a random 512-token model rarely samples EOS within 4 tokens: (nearly) every answer is marked cut off
    assert sum(r.truncated for r in responses) >= 6
    # the same model, seed and prompts give the same text: seed and settings are enough to reproduce a response
    by_seed = {}
    for r in responses:
        by_seed.setdefault((r.prompt_id, r.seed), set()).add(r.text)
    assert all(len(texts) == 1 for texts in by_seed.values())
    project.close()


# ---- annotators ---------------------------------------------------------------------------------------------------

def test_add_user_stores_a_scrypt_hash_and_check_login_counts_failures(project):
    alice = add_user(project, " alice ", "correct horse", admin=True)
    with project.session() as session:
        stored = session.get(store.Annotator, alice).password_hash
    assert stored.startswith("scrypt$16384$8$1$") and "correct horse" not in stored
    salt, digest = stored.split("$")[4:]
    assert len(bytes.fromhex(salt)) == 16 and len(bytes.fromhex(digest)) == 32
    assert add_user(project, "bob", "correct horse") != alice
    with project.session() as session:  # same password, different salt
        assert session.get(store.Annotator, alice + 1).password_hash != stored

    assert check_login(project, "alice", "wrong") is None
    assert check_login(project, "alice", "also wrong") is None
    assert failed_logins(project, "alice") == 2
    with project.session() as session:
        assert session.get(store.Annotator, alice).last_failed_at is not None
    me = check_login(project, "alice", "correct horse")
    assert (me.id, me.name, me.is_admin) == (alice, "alice", True)
    assert failed_logins(project, "alice") == 0
    assert check_login(project, "nobody", "correct horse") is None and failed_logins(project, "nobody") == 0
    assert get_annotator(project, alice) == me and get_annotator(project, 999) is None
    with pytest.raises(UserError, match="already exists"):
        add_user(project, "alice", "x")
    with pytest.raises(UserError, match="empty"):
        add_user(project, "  ", "x")


def test_cli_add_user_generates_a_password_when_stdin_is_no_terminal(project, capsys, monkeypatch):
    import io

    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["label", "add-user", str(project.folder), "carol", "--admin"]) == 0
    out = capsys.readouterr().out
    password = out.split("password (shown once): ")[1].strip()
    assert check_login(project, "carol", password).is_admin
    short = project.folder.parent / "pw.txt"
    short.write_text("short\n")
    assert main(["label", "add-user", str(project.folder), "dave", "--password-file", str(short)]) == 2
    assert capsys.readouterr().err == f"dpokit: error: --password-file {short}: line 1: a password needs at least " \
                                      "8 characters\n"


# ---- assignment ---------------------------------------------------------------------------------------------------

def test_assignment_gives_each_comparison_to_overlap_annotators_never_twice(project):
    alice, bob, carol = users(project, "alice", "bob", "carol")
    task = next_task(project, alice)
    assert next_task(project, alice).assignment_id == task.assignment_id  # open until judged
    assert (task.done, task.total) == (0, 4) and task.kind == "pair" and task.prompt_text in PROMPTS
    assert sorted(s.text for s in task.responses) == sorted(
        r["completion"] for r in generate_rows() if r["prompt"] == task.prompt_text)
    seen = {alice: [], bob: [], carol: []}
    for annotator in (alice, bob, carol):
        while (task := next_task(project, annotator)) is not None:
            record_judgment(project, annotator, task.assignment_id, choice="left", seconds=2.5)
            seen[annotator].append(task.comparison_id)
    # overlap 2: 4 comparisons × 2 = 8 judgments; the first two annotators fill them, nothing is left for carol
    assert sorted(seen[alice]) == sorted(seen[bob]) == [1, 2, 3, 4] and seen[carol] == []
    assert next_task(project, alice) is None and next_task(project, 999) is None  # 999: no such annotator
    with project.session() as session:
        judged = session.scalars(select(store.Judgment).where(store.Judgment.annotator_id == alice)).all()
        assignments = {a.id: a for a in session.scalars(select(store.Assignment))}
    for j in judged:  # the order shown is recorded, and 'left' means the response shown first
        order = json.loads(j.shown_order_json)
        assert order == json.loads(assignments[j.assignment_id].shown_order_json)
        assert j.chosen_response_id == order[0] and j.seconds == 2.5


def test_fuller_comparisons_are_handed_out_first(project):
    alice, bob = users(project, "alice", "bob")
    first = next_task(project, alice)
    record_judgment(project, alice, first.assignment_id, choice="tie")
    assert next_task(project, bob).comparison_id == first.comparison_id


def test_position_order_is_randomised_per_assignment(tmp_path):
    rows = [{"prompt": f"Q{i}", "responses": ["first", "second"]} for i in range(40)]
    project = make_project(tmp_path, None, rows, overlap=1)
    (alice,) = users(project, "alice")
    left_first = 0
    while (task := next_task(project, alice)) is not None:
        left_first += task.responses[0].text == "first"
        record_judgment(project, alice, task.assignment_id, choice="skip")
    assert 8 <= left_first <= 32  # 40 fair coin flips: outside this range has probability < 1e-4
    project.close()


def race(project, annotators, threads_each=2):
    errors = []

    def work(annotator):
        try:
            while (task := next_task(project, annotator)) is not None:
                try:
                    record_judgment(project, annotator, task.assignment_id, choice="left")
                except TaskError:  # the other thread of this annotator judged it first
                    pass
        except Exception as e:  # noqa: BLE001 (reported below)
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(a,)) for a in annotators for _ in range(threads_each)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return errors


def test_racing_threads_never_exceed_overlap_nor_repeat_an_annotator(tmp_path, label_db):
    rows = [{"prompt": f"Q{i}", "responses": ["a", "b", "c"]} for i in range(8)]  # 24 comparisons
    project = make_project(tmp_path, label_db, rows, overlap=2)
    annotators = users(project, *[f"u{i}" for i in range(5)])
    assert race(project, annotators) == []
    per_comparison = count(project, "SELECT comparison_id, COUNT(*), COUNT(DISTINCT annotator_id) FROM assignments "
                                    "GROUP BY comparison_id")
    assert len(per_comparison) == 24 and all(n == distinct == 2 for _, n, distinct in per_comparison)
    live = count(project, "SELECT assignment_id, COUNT(*) FROM judgments WHERE undone_at IS NULL "
                          "GROUP BY assignment_id")
    assert len(live) == 48 and all(n == 1 for _, n in live)
    project.close()


WORKER = """
import sys
from dpokit.label.store import open_project
from dpokit.label.tasks import TaskError, next_task, record_judgment
project = open_project(sys.argv[1], db=sys.argv[2] or None)
annotators = [int(a) for a in sys.argv[3:]]
while annotators:
    for a in list(annotators):
        task = next_task(project, a)
        if task is None:
            annotators.remove(a)
            continue
        try:
            record_judgment(project, a, task.assignment_id, choice="right")
        except TaskError:  # the other process judged this annotator's task first
            pass
"""


@pytest.mark.slow  # each worker imports dpokit (torch with it): seconds per process on a small machine
def test_racing_processes_never_exceed_overlap_nor_repeat_an_annotator(tmp_path, label_db):
    import subprocess
    import sys

    rows = [{"prompt": f"Q{i}", "responses": ["a", "b", "c"]} for i in range(5)]  # 15 comparisons
    project = make_project(tmp_path, label_db, rows, overlap=3)
    annotators = [str(a) for a in users(project, "u0", "u1", "u2", "u3")]
    workers = [subprocess.Popen([sys.executable, "-c", WORKER, str(project.folder), label_db or "", *annotators],
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for worker in workers:
        assert worker.wait(timeout=120) == 0, worker.stderr.read()[-2000:]
    per_comparison = count(project, "SELECT comparison_id, COUNT(*), COUNT(DISTINCT annotator_id) FROM assignments "
                                    "GROUP BY comparison_id")
    assert len(per_comparison) == 15 and all(n == distinct == 3 for _, n, distinct in per_comparison)
    live = count(project, "SELECT assignment_id, COUNT(*) FROM judgments WHERE undone_at IS NULL "
                          "GROUP BY assignment_id")
    assert len(live) == 45 and all(n == 1 for _, n in live)
    project.close()


# ---- judging and undo ---------------------------------------------------------------------------------------------

def test_record_judgment_refuses_what_it_should_and_commits_before_returning(project):
    alice, bob = users(project, "alice", "bob")
    task = next_task(project, alice)
    with pytest.raises(TaskError, match="not one of yours"):
        record_judgment(project, bob, task.assignment_id, choice="left")
    for bad, match in (({"choice": "best"}, "does not fit"), ({"choice": "rank", "ranking": [1, 2]}, "does not fit"),
                       ({"choice": "tie", "strength": "much"}, "only with left or right"),
                       ({"choice": "left", "strength": "huge"}, "slight or much"),
                       ({"choice": "both_bad", "edited_text": "x"}, "pick left or right"),
                       ({"choice": "left", "seconds": -1}, "seconds"),
                       ({"choice": "left", "seconds": float("nan")}, "seconds")):
        with pytest.raises(TaskError, match=match):
            record_judgment(project, alice, task.assignment_id, **bad)
    judgment = record_judgment(project, alice, task.assignment_id, choice="right", strength="slight",
                               reason="  clearer  ", edited_text="A better answer.", seconds=4)
    other = store.open_project(project.folder)  # a second engine, as another process would see it
    with other.session() as session:
        row = session.get(store.Judgment, judgment)
        assert (row.choice, row.strength, row.reason, row.edited_text) == ("right", "slight", "clearer",
                                                                           "A better answer.")
        assert row.chosen_response_id == task.responses[1].response_id
    other.close()
    with pytest.raises(TaskError, match="already judged"):
        record_judgment(project, alice, task.assignment_id, choice="left")


def test_ranking_judgments(tmp_path, label_db):
    project = make_project(tmp_path, label_db, [{"prompt": "Q", "responses": ["a", "b", "c"]}], ranking=True)
    (alice,) = users(project, "alice")
    task = next_task(project, alice)
    assert task.kind == "rank" and len(task.responses) == 3
    ids = [s.response_id for s in task.responses]
    for bad in ([ids[0], ids[1]], [ids[0], ids[0], ids[1]], ["x"]):
        with pytest.raises(TaskError, match="ranking"):
            record_judgment(project, alice, task.assignment_id, choice="rank", ranking=bad)
    with pytest.raises(TaskError, match="does not fit"):
        record_judgment(project, alice, task.assignment_id, choice="left")
    record_judgment(project, alice, task.assignment_id, choice="rank", ranking=ids[::-1])
    with project.session() as session:
        row = session.scalars(select(store.Judgment)).one()
    assert json.loads(row.ranking_json) == ids[::-1] and row.chosen_response_id == ids[-1]
    project.close()


def test_undo_reopens_the_last_judgment_and_keeps_the_row(project):
    (alice,) = users(project, "alice")
    assert undo_last(project, alice) is None
    first = next_task(project, alice)
    record_judgment(project, alice, first.assignment_id, choice="left")
    second = next_task(project, alice)
    record_judgment(project, alice, second.assignment_id, choice="right")
    third = next_task(project, alice)  # shown, not judged yet
    assert undo_last(project, alice) == second.assignment_id
    again = next_task(project, alice)
    assert again.assignment_id == second.assignment_id and again.responses == second.responses  # same order
    assert again.done == 1
    record_judgment(project, alice, second.assignment_id, choice="tie")
    assert next_task(project, alice).assignment_id == third.assignment_id
    rows = count(project, f"SELECT choice, undone_at IS NULL FROM judgments WHERE assignment_id = {second.assignment_id}"
                          " ORDER BY id")
    assert [(c, bool(live)) for c, live in rows] == [("right", False), ("tie", True)]


# ---- statistics ---------------------------------------------------------------------------------------------------

def judge_all(project, annotator, picks, **extra):
    """Judge every task of `annotator`; `picks(task)` gives the choice (and, as a dict, more fields)."""
    while (task := next_task(project, annotator)) is not None:
        choice = picks(task)
        fields = choice if isinstance(choice, dict) else {"choice": choice}
        record_judgment(project, annotator, task.assignment_id, **{**extra, **fields})


def test_admin_summary(project):
    alice, bob = users(project, "alice", "bob")
    m1 = lambda task: choose(task, next(s.text for s in task.responses if s.text.startswith("m1")))  # noqa: E731
    judge_all(project, alice, m1, seconds=2.0)
    # bob agrees on 3 of 4 comparisons: on the last prompt he calls it a tie
    judge_all(project, bob, lambda t: "tie" if t.prompt_text == PROMPTS[3] else m1(t), seconds=6.0)
    summary = admin_summary(project)
    assert (summary["comparisons"], summary["judgments"], summary["complete"]) == (4, 8, 4)
    by_name = {a["name"]: a for a in summary["annotators"]}
    assert by_name["alice"]["judgments"] == 4 and by_name["alice"]["median_seconds"] == 2.0
    assert by_name["bob"]["agreement_with_majority"] == pytest.approx(0.75)
    # labels: alice A A A A, bob A A A tie (m1's answer is stored first): p_o = 3/4, p_e = 1·3/4, κ = 0
    (pair,) = summary["kappa"]
    assert (pair["a"], pair["b"], pair["n"]) == ("alice", "bob", 4) and pair["kappa"] == pytest.approx(0.0)
    # α: coincidences o_AA = 6, o_A,tie = o_tie,A = 1, n = 8; α = 1 − 7·2/(2·7·1) = 0
    assert summary["alpha"] == pytest.approx(0.0)
    lefts = count(project, "SELECT COUNT(*) FROM judgments WHERE choice = 'left'")[0][0]
    assert summary["position_bias"] == {"left_share": pytest.approx(lefts / 7), "n": 7}


# ---- export -------------------------------------------------------------------------------------------------------

def export_project(tmp_path, db):
    """Three annotators on five pairs (overlap 3), with known votes:
    Q0: all pick 'good0' (much, slight, none)   Q1: 2 pick 'good1', 1 the other     Q2: tie, tie, good2
    Q3: good3, bad3, skip (a tied vote)          Q4: all pick 'good4', bob edits it"""
    rows = [{"prompt": f"Q{i}", "responses": [f"good{i}", f"bad{i}"]} for i in range(5)]
    project = make_project(tmp_path, db, rows, overlap=3, name="demo")
    alice, bob, carol = users(project, "alice", "bob", "carol")
    plan = {
        alice: {"Q0": ("good", "much"), "Q1": ("good", None), "Q2": "tie", "Q3": ("good", None), "Q4": ("good", None)},
        bob: {"Q0": ("good", "slight"), "Q1": ("good", None), "Q2": "tie", "Q3": ("bad", None),
              "Q4": ("good", "much", "an edited good4")},
        carol: {"Q0": ("good", None), "Q1": ("bad", None), "Q2": ("good", None), "Q3": "skip", "Q4": ("good", None)},
    }

    def picks(annotator):
        def pick(task):
            vote = plan[annotator][task.prompt_text]
            if isinstance(vote, str):
                return vote
            word, strength, *edit = vote
            fields = {"choice": choose(task, f"{word}{task.prompt_text[1:]}"), "strength": strength}
            return {**fields, "edited_text": edit[0]} if edit else fields
        return pick

    for annotator in (alice, bob, carol):
        judge_all(project, annotator, picks(annotator))
    return project


def test_export_majority(tmp_path, label_db):
    project = export_project(tmp_path, label_db)
    rows, counts = export_rows(project)
    assert rows == [
        {"prompt": "Q0", "chosen": "good0", "rejected": "bad0", "margin": 0.75, "origin": "label:demo:comparison=1"},
        {"prompt": "Q1", "chosen": "good1", "rejected": "bad1", "origin": "label:demo:comparison=2"},
        {"prompt": "Q4", "chosen": "an edited good4", "rejected": "bad4", "margin": 1.0,
         "origin": "label:demo:comparison=5"},
    ]
    assert {k: counts[k] for k in ("comparisons", "judgments", "rows", "tie", "no_majority", "skip", "edited")} == \
        {"comparisons": 5, "judgments": 15, "rows": 3, "tie": 1, "no_majority": 1, "skip": 1, "edited": 1}
    project.close()


def test_export_unanimous_all_and_min_annotators(tmp_path, label_db):
    project = export_project(tmp_path, label_db)
    rows, counts = export_rows(project, policy="unanimous")
    assert [r["origin"] for r in rows] == ["label:demo:comparison=1", "label:demo:comparison=5"]
    assert counts["not_unanimous"] == 3  # Q1 (2:1), Q2 (tie, tie, good2), Q3 (good, bad)
    rows, counts = export_rows(project, policy="all")
    pairs = [(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    assert pairs == [("Q0", "good0", "bad0"), ("Q1", "good1", "bad1"), ("Q1", "bad1", "good1"),
                     ("Q2", "good2", "bad2"), ("Q3", "good3", "bad3"), ("Q3", "bad3", "good3"),
                     ("Q4", "good4", "bad4"), ("Q4", "an edited good4", "bad4")]
    assert rows[0]["margin"] == 1.0 and rows[0]["origin"].startswith("label:demo:comparison=1:judgment=")
    assert (counts["tie"], counts["skip"], counts["duplicate"]) == (2, 1, 4)  # Q0 2, Q1 1, Q4 1
    rows, counts = export_rows(project, min_annotators=3)  # Q3 had only 2 votes (one skip)
    assert counts["too_few_annotators"] == 1 and counts["no_majority"] == 0
    project.close()


def test_export_rankings_best_vs_worst_and_all_pairs(tmp_path, label_db):
    project = make_project(tmp_path, label_db, [{"prompt": "Q", "responses": ["a", "b", "c"]}], ranking=True,
                           overlap=3)
    annotators = users(project, "alice", "bob", "carol")
    orders = (["a", "b", "c"], ["a", "c", "b"], ["b", "a", "c"])  # mean ranks: a 1/3, b 1, c 4/3 (0-based)
    for annotator, order in zip(annotators, orders):
        task = next_task(project, annotator)
        by_text = {s.text: s.response_id for s in task.responses}
        record_judgment(project, annotator, task.assignment_id, choice="rank", ranking=[by_text[t] for t in order])
    rows, _ = export_rows(project)
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("a", "c")]
    rows, _ = export_rows(project, ranking="all-pairs")  # a>b 2:1, a>c 3:0, b>c 2:1
    assert sorted((r["chosen"], r["rejected"]) for r in rows) == [("a", "b"), ("a", "c"), ("b", "c")]
    rows, counts = export_rows(project, policy="unanimous", ranking="all-pairs")
    assert [(r["chosen"], r["rejected"]) for r in rows] == [("a", "c")] and counts["not_unanimous"] == 2
    project.close()


def test_export_conversational_prompts_write_messages(tmp_path):
    chat = [{"role": "user", "content": "Hi"}]
    project = make_project(tmp_path, None, [{"prompt": chat, "responses": ["Hello!", "Go away."]},
                                            {"prompt": "Text prompt", "responses": ["yes", "no"]}], overlap=1)
    (alice,) = users(project, "alice")
    judge_all(project, alice, lambda t: choose(t, "Hello!" if t.prompt_messages else "yes"))
    rows, _ = export_rows(project)
    assert rows[0]["prompt"] == chat and rows[0]["chosen"] == [{"role": "assistant", "content": "Hello!"}]
    assert rows[1]["prompt"] == [{"role": "user", "content": "Text prompt"}]  # one shape per file
    project.close()


def test_exported_file_validates_and_trains_two_steps_of_dpo(tmp_path, tiny_model_dir, capsys):
    project = export_project(tmp_path, None)
    output = tmp_path / "pairs.jsonl"
    assert main(["label", "export", str(project.folder), "--output", str(output), "--policy", "all"]) == 0
    assert "wrote 8 pairs" in capsys.readouterr().out
    assert main(["label", "export", str(project.folder), "--output", str(output)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["validate", str(output), "--no-tokens"]) == 0
    run = tmp_path / "run"
    code = main(["dpo", "--model", str(tiny_model_dir), "--data", str(output), "--output", str(run),
                 "--max-steps", "2", "--batch-size", "2", "--eval-fraction", "0", "--max-length", "64",
                 "--max-prompt-length", "32"])
    assert code == 0, capsys.readouterr().err
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2]
    # unanimous pairs here all carry a strength, so odpo (which reads `margin`) trains on them too
    strong = tmp_path / "strong.jsonl"
    assert main(["label", "export", str(project.folder), "--output", str(strong), "--policy", "unanimous"]) == 0
    assert all("margin" in json.loads(line) for line in strong.read_text().splitlines())
    assert main(["dpo", "--model", str(tiny_model_dir), "--data", str(strong), "--output", str(tmp_path / "odpo"),
                 "--max-steps", "2", "--batch-size", "2", "--eval-fraction", "0", "--max-length", "64",
                 "--max-prompt-length", "32", "--loss", "odpo"]) == 0, capsys.readouterr().err
    project.close()


# ---- bad input: one line, file, line and field, exit 2 ----------------------------------------------------------

BAD_IMPORTS = [
    ('{"prompt": "Q", "completion": "a"}\n{"prompt": "Q", "completion": 3}\n',
     "bad.jsonl:2: field 'completion' must be a string, got a int"),
    ('{"prompt": "Q", "answer": "a"}\n',
     "bad.jsonl:1: no field 'completion' or 'responses'; give rows {prompt, completion, model?} (dpokit generate's "
     "output) or {prompt, responses: [...]}"),
    ('{"prompt": 5, "completion": "a"}\n',
     "bad.jsonl:1: field 'prompt' is a int; give a string or a non-empty list of {\"role\", \"content\"} messages"),
    ('{"prompt": [{"role": "user"}], "responses": ["a", "b"]}\n',
     "bad.jsonl:1: field 'prompt'[0] must be an object with string 'role' and 'content'"),
    ('{"prompt": "Q", "responses": ["a", 7]}\n',
     "bad.jsonl:1: field 'responses[1]' must be a string or an object with a string 'text', got a int"),
    ('{"prompt": "Q", "responses": []}\n',
     "bad.jsonl:1: field 'responses' must be a non-empty list of strings (or {\"text\", \"model\"} objects), got a "
     "list"),
    ('{"prompt": "Q", "completion": "a", "model": 1}\n',
     "bad.jsonl:1: field 'model' must be a string (the model's name or path), got a int"),
    ('{"prompt": "Q", "completion": "a"}\n{"prompt": "R", "completion": "b"}\n{"prompt": "Q", "completion": "c"}\n',
     "bad.jsonl:2: field 'prompt' has only 1 response in the file; a comparison needs at least 2 (rows of the same "
     "prompt are grouped)"),
    ('{"prompt": "Q", "completion": "a"}\n{"prompt": "Q", "completion": \n',
     None),  # broken JSON: dpokit's reader names the line
]


@pytest.mark.parametrize("content, expected", BAD_IMPORTS)
def test_bad_import_files_are_one_line_with_file_line_and_field(tmp_path, capsys, content, expected, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("bad.jsonl").write_text(content, encoding="utf-8")
    with pytest.raises(DataError) as e:
        read_responses("bad.jsonl")
    assert expected is None and str(e.value).startswith("bad.jsonl:2: ") or str(e.value) == expected
    assert main(["label", "init", "proj", "--responses", "bad.jsonl"]) == 2
    err = capsys.readouterr().err
    assert err == f"dpokit: error: {e.value}\n"
    assert not Path("proj").exists()  # nothing is created before the input is known to be good


@pytest.mark.parametrize("url, expected", [
    ("mysql://user@localhost/db", "--db mysql://user@localhost/db: unknown database scheme 'mysql'; give "
                                  "sqlite:///PATH.db or postgresql://USER:PASSWORD@HOST:PORT/DATABASE"),
    ("not a url", "--db 'not a url': not a database URL; give sqlite:///PATH.db or "
                  "postgresql://USER:PASSWORD@HOST:PORT/DATABASE"),
    ("postgresql://me:secret@127.0.0.1:1/labels", "--db postgresql://me:***@127.0.0.1:1/labels: cannot connect ("),
    ("postgresql+psycopg2://me@127.0.0.1/labels", "--db postgresql+psycopg2://me@127.0.0.1/labels: the database "
                                                  "driver is missing ("),
    ("sqlite:////no/such/folder/x.db", "--db sqlite:////no/such/folder/x.db: folder /no/such/folder does not exist"),
])
def test_bad_db_urls_are_one_line(tmp_path, capsys, url, expected, monkeypatch):
    if "psycopg2" in url:
        pytest.importorskip("sqlalchemy")  # the missing driver is the point; skip where someone installed it
        try:
            import psycopg2  # noqa: F401
            pytest.skip("psycopg2 is installed here")
        except ImportError:
            pass
    monkeypatch.chdir(tmp_path)
    write_jsonl(Path("r.jsonl"), generate_rows())
    assert main(["label", "init", "proj", "--responses", "r.jsonl", "--db", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"dpokit: error: {expected}") and err.count("\n") == 1 and "secret" not in err
    assert not Path("proj").exists()


def test_commands_on_a_folder_without_a_project(tmp_path, capsys):
    assert main(["label", "export", str(tmp_path), "--output", str(tmp_path / "x.jsonl")]) == 2
    assert capsys.readouterr().err == (f"dpokit: error: {tmp_path}: no labeling project there (no secret file); "
                                       f"create one with `dpokit label init {tmp_path} ...`\n")
    project = make_project(tmp_path, None)
    project.close()
    (project.folder / "label.db").unlink()  # never a silent new, empty database in its place
    with pytest.raises(UserError, match="database label.db is missing"):
        store.open_project(project.folder)


def test_a_sqlite_url_given_to_init_is_kept_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    project = make_project(tmp_path, "sqlite:///elsewhere.db")
    project.close()
    monkeypatch.chdir("/")
    reopened = store.open_project(tmp_path / "proj")
    assert reopened.url == f"sqlite:///{tmp_path / 'elsewhere.db'}" and not (tmp_path / "proj" / "label.db").exists()
    reopened.close()
