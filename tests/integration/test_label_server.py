"""The labeling web app over a real project (SQLite, and PostgreSQL where a server can start): sessions, CSRF,
security headers, slowed log-ins, the judgment flow, undo, admin-only pages and hostile text shown as text."""
import json
import re
import time
from html.parser import HTMLParser

import pytest
from sqlalchemy import text

from label_db import label_db, postgres_server  # noqa: F401  (fixtures: sqlite and postgresql)

pytest.importorskip("httpx")
from fastapi.routing import APIRoute  # noqa: E402
from fastapi.testclient import TestClient  # noqa: E402

PASSWORD = "correct horse battery"
HOSTILE = [
    "<script>window.__xss=1;alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '<a href="javascript:alert(1)">click me</a> [md](javascript:alert(1))',
    "</textarea><script>alert(1)</script>",
]
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; "
       "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def rows_for(n: int, hostile: bool = False) -> list[dict]:
    rows = [{"prompt": f"Question {i}: how do I boil an egg?", "responses": [f"Answer {i}a: ten minutes.",
                                                                           f"Answer {i}b: three minutes."]}
            for i in range(n)]
    if hostile:
        rows[0] = {"prompt": "\n\nHuman: " + HOSTILE[0] + "\n\nAssistant:", "responses": [HOSTILE[1], HOSTILE[2]]}
        rows[1] = {"prompt": HOSTILE[2], "responses": [HOSTILE[3], HOSTILE[0]]}
    return rows


def make_project(folder, db, rows, *, overlap=2, ranking=False, users=("alice", "bob"), admin="root"):
    """A project made with the real CLI (`dpokit label init --responses`, `add-user`), opened in this process."""
    from dpokit.cli import main
    from dpokit.label.store import open_project

    data = folder.parent / f"{folder.name}-rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    db_args = ["--db", db] if db else []
    assert main(["label", "init", str(folder), "--responses", str(data), "--overlap", str(overlap), *db_args,
                 *(["--ranking"] if ranking else [])]) == 0
    secret = folder.parent / f"{folder.name}-password"
    secret.write_text(PASSWORD + "\n")
    for name in users:
        assert main(["label", "add-user", str(folder), name, "--password-file", str(secret), *db_args]) == 0
    assert main(["label", "add-user", str(folder), admin, "--admin", "--password-file", str(secret), *db_args]) == 0
    return open_project(folder, db=db)


@pytest.fixture
def project(label_db, tmp_path):  # noqa: F811
    project = make_project(tmp_path / "proj", label_db, rows_for(6, hostile=True))
    yield project
    project.close()


@pytest.fixture
def app(project):
    from dpokit.label.server import create_app

    return create_app(project)


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def log_in(app, name, password=PASSWORD):
    client = TestClient(app, follow_redirects=False)
    token = csrf_of(client.get("/login").text)
    answer = client.post("/login", data={"csrf": token, "name": name, "password": password})
    assert answer.status_code == 303, answer.text
    return client


def assignment_on(client) -> int | None:
    found = re.search(r'name="assignment_id" value="(\d+)"', client.get("/task").text)
    return int(found.group(1)) if found else None


def page_csrf(client) -> str:
    return csrf_of(client.get("/task").text)


def judge(client, **fields):
    html = client.get("/task").text
    assignment = re.search(r'name="assignment_id" value="(\d+)"', html).group(1)
    return client.post("/judge", data={"csrf": csrf_of(html), "assignment_id": assignment, **fields}), int(assignment)


def query(project, sql, **params):
    with project.session() as session:
        return [tuple(r) for r in session.execute(text(sql), params).all()]


class Scripts(HTMLParser):
    """Every <script> tag, every on* attribute and every javascript: URL in a page."""

    def __init__(self):
        super().__init__()
        self.scripts, self.handlers, self.js_urls = [], [], []

    def handle_starttag(self, tag, attrs):
        if tag == "script":
            self.scripts.append(dict(attrs))
        for key, value in attrs:
            if key.startswith("on"):
                self.handlers.append((tag, key))
            if key in ("href", "src", "action") and (value or "").strip().lower().startswith("javascript:"):
                self.js_urls.append((tag, value))


def scripts_in(html: str) -> Scripts:
    parser = Scripts()
    parser.feed(html)
    return parser


# --- every route is guarded ---------------------------------------------------------------------------------------

def api_routes(app):
    return [(route.path, method) for route in app.routes if isinstance(route, APIRoute)
            for method in sorted(route.methods)]


def test_every_route_refuses_a_request_without_a_session(app):
    routes = api_routes(app)
    paths = {path for path, _ in routes}
    assert {"/", "/task", "/judge", "/undo", "/guidelines", "/admin", "/admin/export.jsonl",
            "/admin/guidelines", "/logout", "/login"} <= paths  # the enumeration sees the app
    client = TestClient(app, follow_redirects=False)
    for path, method in routes:
        if path == "/login":
            continue
        answer = client.request(method, path, data={"assignment_id": "1", "choice": "left"})
        if method == "GET":
            assert answer.status_code == 303 and answer.headers["location"] == "/login", (method, path)
        else:
            assert answer.status_code == 401, (method, path)
        assert "Answer" not in answer.text and "root" not in answer.text
    assert client.get("/static/label.js").status_code == 200  # public assets are the one exception


def test_every_post_needs_the_sessions_csrf_token(app, project):
    client = log_in(app, "root")
    posts = [path for path, method in api_routes(app) if method == "POST"]
    assert {"/judge", "/undo", "/logout", "/login", "/admin/guidelines"} <= set(posts)
    for path in posts:
        for token in (None, "forged-token"):
            data = {"assignment_id": "1", "choice": "left", "guidelines": "pwned"}
            if token:
                data["csrf"] = token
            assert client.post(path, data=data).status_code == 403, (path, token)
    assert query(project, "SELECT count(*) FROM judgments") == [(0,)]
    assert "pwned" not in client.get("/guidelines").text
    assert client.get("/task").status_code == 200  # still signed in: the refused logout did nothing


def test_security_headers_and_session_cookie(app):
    client = TestClient(app, follow_redirects=False)
    answer = client.get("/login")
    assert answer.headers["content-security-policy"] == CSP
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["referrer-policy"] == "no-referrer"
    cookie = answer.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie
    assert client.get("/task").headers["content-security-policy"] == CSP  # refusals carry it too
    script = client.get("/static/label.js")
    assert script.headers["content-security-policy"] == CSP and "keydown" in script.text


def test_failed_log_ins_are_slowed_and_reset_by_a_good_one(app, project):
    client = TestClient(app, follow_redirects=False)
    token = csrf_of(client.get("/login").text)
    waits = []
    for _ in range(3):
        start = time.perf_counter()
        answer = client.post("/login", data={"csrf": token, "name": "alice", "password": "wrong"})
        waits.append(time.perf_counter() - start)
        assert answer.status_code == 401 and "Wrong name or password" in answer.text
    assert waits[0] >= 0.25 and waits[1] >= 0.5 and waits[2] >= 1.0  # doubling
    assert query(project, "SELECT failed_logins FROM annotators WHERE name = 'alice'") == [(3,)]
    assert client.get("/task").status_code == 303  # not signed in
    log_in(app, "alice")
    assert query(project, "SELECT failed_logins FROM annotators WHERE name = 'alice'") == [(0,)]


# --- the judgment flow ---------------------------------------------------------------------------------------------

def test_compare_view_shows_the_recorded_order(app, project):
    client = log_in(app, "alice")
    html = client.get("/task").text
    assignment = int(re.search(r'name="assignment_id" value="(\d+)"', html).group(1))
    (order,) = query(project, "SELECT shown_order_json FROM assignments WHERE id = :a", a=assignment)[0]
    texts = dict(query(project, "SELECT id, text FROM responses"))
    left, right = (html.find(escape(texts[i])) for i in json.loads(order))
    assert 0 < left < right  # A is the first recorded response, B the second
    assert 'progress value="0"' in html and "/static/label.js" in html


def test_a_conversation_is_shown_as_turns_and_model_names_never(label_db, tmp_path):  # noqa: F811
    from dpokit.label.server import create_app

    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                    {"role": "assistant", "content": "Hello! How can I help?"},
                    {"role": "user", "content": "Tell me a joke"}]
    rows = [{"prompt": conversation, "responses": [{"text": "A pun about owls.", "model": "/models/llama-secret-7b"},
                                                   {"text": "No.", "model": "qwen-hidden-0.5b"}]}]
    project = make_project(tmp_path / "chat", label_db, rows, overlap=1)
    try:
        html = log_in(create_app(project), "alice").get("/task").text
        turns = re.findall(r'<div class="turn (\w+)"><span class="role">\w+</span><div class="text">([^<]*)</div>', html)
        assert turns == [(m["role"], m["content"]) for m in conversation]
        assert "A pun about owls." in html and "No." in html
        assert "llama-secret" not in html and "qwen-hidden" not in html
    finally:
        project.close()


def test_an_hh_rlhf_prompt_is_split_into_turns():
    from types import SimpleNamespace

    from dpokit.label.server import prompt_turns

    task = SimpleNamespace(prompt_messages=None,
                           prompt_text="\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: A joke?\n\nAssistant:")
    assert prompt_turns(task) == [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
                                  {"role": "user", "content": "A joke?"}]
    plain = SimpleNamespace(prompt_messages=None, prompt_text="Just a question")
    assert prompt_turns(plain) == [{"role": "user", "content": "Just a question"}]


def escape(value: str) -> str:
    """As Jinja2's autoescape writes it."""
    from markupsafe import escape as markup_escape

    return str(markup_escape(value))


def test_judge_edit_and_undo(app, project):
    client = log_in(app, "alice")
    answer, first = judge(client, choice="left", strength="much", reason="more accurate", seconds="3.25")
    assert answer.status_code == 303 and answer.headers["location"] == "/task"
    row = query(project, "SELECT choice, strength, reason, seconds, chosen_response_id, undone_at FROM judgments "
                         "WHERE assignment_id = :a", a=first)
    (order,) = query(project, "SELECT shown_order_json FROM assignments WHERE id = :a", a=first)[0]
    assert row == [("left", "much", "more accurate", 3.25, json.loads(order)[0], None)]

    answer, second = judge(client, choice="right", edited_text="Line one\r\nline two", seconds="1e300")
    assert answer.status_code == 303 and second != first
    edited, seconds = query(project, "SELECT edited_text, seconds FROM judgments WHERE assignment_id = :a",
                            a=second)[0]
    assert edited == "Line one\nline two"  # the browser's CRLF is the text's LF again
    original = query(project, "SELECT r.text FROM responses r JOIN judgments j ON j.chosen_response_id = r.id "
                              "WHERE j.assignment_id = :a", a=second)[0][0]
    assert original != edited  # the original answer is kept beside the edit
    assert seconds == 24 * 3600  # a nonsense time is capped, not trusted

    assert assignment_on(client) not in (first, second)
    assert client.post("/undo", data={"csrf": page_csrf(client)}).status_code == 303
    assert assignment_on(client) == second  # the undone one is back
    assert query(project, "SELECT count(*) FROM judgments WHERE assignment_id = :a AND undone_at IS NOT NULL",
                 a=second) == [(1,)]  # kept, marked undone
    answer, again = judge(client, choice="tie")
    assert answer.status_code == 303 and again == second
    answer = client.post("/judge", data={"csrf": page_csrf(client), "assignment_id": str(first), "choice": "right"})
    assert answer.status_code == 409  # judged already: no second live judgment


def test_an_annotator_cannot_touch_anothers_judgments(app, project):
    alice, bob = log_in(app, "alice"), log_in(app, "bob")
    _, judged = judge(alice, choice="left")
    open_one = assignment_on(alice)
    token = page_csrf(bob)
    for assignment in (judged, open_one):
        answer = bob.post("/judge", data={"csrf": token, "assignment_id": str(assignment), "choice": "right"})
        assert answer.status_code == 409 and "Answer" not in answer.text
    assert bob.post("/undo", data={"csrf": token}).status_code == 303  # bob has nothing to undo ...
    assert query(project, "SELECT a.name, j.choice, j.undone_at FROM judgments j "
                          "JOIN annotators a ON a.id = j.annotator_id") == [("alice", "left", None)]  # ... alice's stays
    assert "Nothing to undo" in bob.get("/task").text
    assert assignment_on(bob) not in (judged, open_one)  # bob is never shown alice's tasks


def test_admin_pages_are_for_admins_only(app, project):
    alice = log_in(app, "alice")
    token = page_csrf(alice)
    admin_routes = [(path, method) for path, method in api_routes(app) if path.startswith("/admin")]
    assert len(admin_routes) >= 3
    for path, method in admin_routes:
        answer = alice.request(method, path, data={"csrf": token, "guidelines": "pwned"})
        assert answer.status_code == 403, (method, path)
    assert "Admin" not in alice.get("/task").text.split("<main>")[0]  # no link to it either

    judge(alice, choice="left")
    root = log_in(app, "root")
    page = root.get("/admin")
    assert page.status_code == 200
    for heading in ("Cohen's κ", "Krippendorff's α", "Position bias", "median seconds", "agreement with majority"):
        assert heading in page.text
    assert re.search(r"<td>alice</td><td>1</td>", page.text)


def test_export_download_is_the_export_module(app, project):
    from dpokit.label.export import export_rows

    def prefer_first_imported(client):
        """Both pick the same response (the one imported first), wherever the page shows it."""
        assignment = assignment_on(client)
        (order,) = query(project, "SELECT shown_order_json FROM assignments WHERE id = :a", a=assignment)[0]
        order = json.loads(order)
        judge(client, choice="left" if order[0] == min(order) else "right", strength="much")

    alice, bob = log_in(app, "alice"), log_in(app, "bob")
    for _ in range(3):
        prefer_first_imported(alice)
        prefer_first_imported(bob)
    answer = log_in(app, "root").get("/admin/export.jsonl")
    assert answer.status_code == 200 and "attachment" in answer.headers["content-disposition"]
    rows = [json.loads(line) for line in answer.text.splitlines()]
    assert rows == export_rows(project)[0] and len(rows) == 3
    assert log_in(app, "root").get("/admin/export.jsonl?policy=everything").status_code == 400


# --- hostile text --------------------------------------------------------------------------------------------------

def test_hostile_prompts_and_responses_render_as_text(app, project):
    client = log_in(app, "alice")
    seen = set()
    for _ in range(2 * 6):
        html = client.get("/task").text
        if "name=\"assignment_id\"" not in html:
            break
        parsed = scripts_in(html)
        assert parsed.scripts == [{"src": "/static/label.js", "defer": None}]  # nothing but our own script
        assert parsed.handlers == [] and parsed.js_urls == []
        assert "<img" not in html and "</textarea><script" not in html
        seen.update(h for h in HOSTILE if escape(h) in html)
        judge(client, choice="skip")
    assert seen == set(HOSTILE)  # every payload was on a page, escaped


def test_guidelines_markdown_keeps_html_and_javascript_links_inert(app):
    root = log_in(app, "root")
    markdown = ("# Be kind\n\nPrefer **helpful** answers. <script>window.__xss=1</script>\n\n"
                "<img src=x onerror=alert(1)>\n\n[bad link](javascript:alert(1)) [good link](https://example.org)\n\n"
                "</textarea><b>bold?</b>")
    assert root.post("/admin/guidelines", data={"csrf": page_csrf(root), "guidelines": markdown}).status_code == 303
    html = log_in(app, "alice").get("/guidelines").text
    assert "<h1>Be kind</h1>" in html and "<strong>helpful</strong>" in html
    assert '<a href="https://example.org">good link</a>' in html
    parsed = scripts_in(html)
    assert len(parsed.scripts) == 1 and parsed.handlers == [] and parsed.js_urls == []
    assert "&lt;script&gt;window.__xss=1&lt;/script&gt;" in html and "&lt;b&gt;bold?&lt;/b&gt;" in html
    admin_page = root.get("/admin").text
    assert "&lt;/textarea&gt;&lt;b&gt;" in admin_page  # the edit box holds the text, it does not end early


# --- ranking -------------------------------------------------------------------------------------------------------

def test_ranking_view_records_a_ranking(label_db, tmp_path):  # noqa: F811
    from dpokit.label.server import create_app

    rows = [{"prompt": "Pick the best greeting", "responses": ["Hello!", "Hi.", "Good day to you."]}]
    project = make_project(tmp_path / "rank", label_db, rows, overlap=1, ranking=True)
    try:
        client = log_in(create_app(project), "alice")
        html = client.get("/task").text
        assert 'data-kind="rank"' in html
        shown = [int(i) for i in re.findall(r'name="rank_(\d+)"', html)]
        assert len(shown) == 3
        best_first = [shown[2], shown[0], shown[1]]
        ranks = {f"rank_{response_id}": str(rank) for rank, response_id in enumerate(best_first, 1)}
        answer, _ = judge(client, choice="rank", **ranks)
        assert answer.status_code == 303
        assert [json.loads(r) for (r,) in query(project, "SELECT ranking_json FROM judgments")] == [best_first]
        assert "All done" in client.get("/task").text
    finally:
        project.close()
