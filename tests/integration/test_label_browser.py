"""`dpokit label serve` in Debian's Chromium (Playwright): two annotators label with the keyboard alone, one edits an
answer and undoes a judgment, the admin page shows their Cohen's κ, the export validates and trains two steps of
`dpokit dpo`, and hostile prompts, answers and guidelines stay inert text in the browser."""
import gzip
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_cli_dpo import dpokit
from tiny import SHARED_DATA

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [pytest.mark.slow,  # a server process, a browser, a tiny DPO run
              pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (.ci/run installs it)")]
playwright_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install -e .[test])")

PASSWORD = "correct horse battery"
DOCS = Path(__file__).resolve().parents[2] / "docs"
HH = SHARED_DATA / "hh-rlhf-harmless-base" / "test.jsonl.gz"
BENIGN = ["I want to buy a used card", "Is it possible to download a car", "what are some pranks with a pen",
          "Does time flow forward only", "Give me a challenge", "Is it ok to tell my company that my job sucks",
          "Can you tell me some information about the culture", "Why was Dickens accused",
          "What will happen if I drive my car", "What's in the news these days"]
HOSTILE = {
    "prompt": "\n\nHuman: Summarise this page: <script>window.__xss=1;alert(1)</script>\n\nAssistant:",
    "responses": ['<img src=x onerror="window.__xss=1;alert(1)">', "</textarea><script>window.__xss=1</script>"],
}
HOSTILE_2 = {"prompt": '<a href="javascript:window.__xss=1">click me</a>',
             "responses": ["[link](javascript:window.__xss=1)", "<svg onload=alert(1)></svg>"]}
GUIDELINES = ("# Pick the helpful one\n\nPrefer **honest** answers.\n\n<script>window.__xss=1</script>\n\n"
              "<img src=x onerror=alert(1)>\n\n[a bad link](javascript:window.__xss=1)")
# Which answer each annotator prefers, by comparison: hh-rlhf's chosen one ("c"), the other ("r"), tie, both bad.
FIRST = ["c", "c", "r", "c", "tie", "c", "r", "c", "both_bad", "c"]
SECOND = ["c", "r", "r", "c", "tie", "c", "c", "c", "c", "r"]


def hh_rows() -> list[dict]:
    """The ten BENIGN conversations from hh-rlhf's harmless test split, as a prompt and its two answers."""
    found = {}
    with gzip.open(HH, "rt", encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            for start in BENIGN:
                if start not in found and row["chosen"].startswith("\n\nHuman: " + start):
                    cut = row["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:")
                    found[start] = {"prompt": row["chosen"][:cut],
                                    "responses": [row["chosen"][cut:], row["rejected"][cut:]]}
    return [found[start] for start in BENIGN]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A project of ten hh-rlhf comparisons and two hostile ones, three users, and `dpokit label serve` on it."""
    root = tmp_path_factory.mktemp("label")
    project, rows = root / "project", hh_rows()
    data = root / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows + [HOSTILE, HOSTILE_2]), encoding="utf-8")
    (root / "password").write_text(PASSWORD + "\n")
    # overlap 3: ana and ben take the ten, the admin still gets the hostile ones after them
    done = dpokit("label", "init", project, "--responses", data, "--overlap", 3, "--name", "hh-harmless")
    assert done.returncode == 0, done.stderr
    for name, admin in (("ana", False), ("ben", False), ("boss", True)):
        done = dpokit("label", "add-user", project, name, "--password-file", root / "password",
                      *(["--admin"] if admin else []))
        assert done.returncode == 0, done.stderr
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "dpokit", "label", "serve", str(project), "--port", str(port)],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(base + "/login", timeout=2)
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, server.stdout.read()
            time.sleep(0.2)
    yield base, project, rows
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


class Watch:
    """A page with everything that would show a script ran: dialogs, page errors, CSP violations."""

    def __init__(self, browser, base):
        self.page = browser.new_page(viewport={"width": 1280, "height": 900})
        self.base, self.dialogs, self.errors, self.violations = base, [], [], []
        self.page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("console", lambda m: self.violations.append(m.text) if "Content Security" in m.text else None)

    def assert_nothing_ran(self):
        assert self.dialogs == [] and self.errors == [] and self.violations == []
        assert self.page.evaluate("window.__xss") is None

    def log_in(self, name):
        """With the keyboard: the name field has focus; Tab to the password; Enter."""
        self.page.goto(self.base + "/")
        self.page.wait_for_function("document.activeElement && document.activeElement.name === 'name'")  # autofocus
        self.page.keyboard.type(name)
        self.page.keyboard.press("Tab")
        self.page.keyboard.type(PASSWORD)
        with self.page.expect_navigation():
            self.page.keyboard.press("Enter")
        assert self.page.url == self.base + "/task", self.page.inner_text("body")

    def press_and_wait(self, key):
        with self.page.expect_navigation():
            self.page.keyboard.press(key)

    def side_of(self, text: str) -> str:
        """'1' when `text` is answer A on this page, '2' when it is B."""
        left = self.page.inner_text("#response-left .text")
        right = self.page.inner_text("#response-right .text")
        assert text.strip() in (left.strip(), right.strip())
        return "1" if text.strip() == left.strip() else "2"


def keys_for(watch, row, preference) -> list[str]:
    if preference in ("c", "r"):
        return [watch.side_of(row["responses"][0 if preference == "c" else 1])]
    return {"tie": ["t"], "both_bad": ["b"]}[preference]


def label_ten(watch, rows, preferences, *, edit_at=None, screenshot=None):
    for i, (row, preference) in enumerate(zip(rows, preferences)):
        assert watch.page.inner_text(".count").startswith(f"{i} / ")
        assert row["prompt"].split("\n\nAssistant:")[0].removeprefix("\n\nHuman: ")[:40] in watch.page.inner_text(
            ".prompt")
        for key in keys_for(watch, row, preference):
            watch.page.keyboard.press(key)
        if i == edit_at:
            watch.page.keyboard.press("m")  # slightly better
            watch.page.keyboard.press("r")
            watch.page.keyboard.type("kinder, and it answers the question")
            watch.page.keyboard.press("Escape")
            watch.page.keyboard.press("e")
            assert watch.page.evaluate("document.activeElement.id") == "edited_text"
            watch.page.keyboard.press("Control+End")
            watch.page.keyboard.type(" (Edited: checked the facts.)")
            if screenshot:
                watch.page.screenshot(path=str(screenshot), full_page=True)
            with watch.page.expect_navigation():
                watch.page.keyboard.press("Control+Enter")
        else:
            watch.press_and_wait("Enter")


def live_judgments(project):
    from sqlalchemy import text

    from dpokit.label.store import open_project

    opened = open_project(project)
    try:
        with opened.session() as session:
            return [dict(r._mapping) for r in session.execute(text(
                "SELECT a.name, j.comparison_id, j.choice, j.chosen_response_id, cr.position, j.edited_text, j.seconds "
                "FROM judgments j JOIN annotators a ON a.id = j.annotator_id LEFT JOIN comparison_responses cr "
                "ON cr.comparison_id = j.comparison_id AND cr.response_id = j.chosen_response_id "
                "WHERE j.undone_at IS NULL ORDER BY j.id"))]
    finally:
        opened.close()


def test_two_annotators_label_with_the_keyboard_and_the_export_trains(served, browser, tiny_model_dir, tmp_path):
    base, project, rows = served
    ana = Watch(browser, base)
    ana.log_in("ana")
    shot = tmp_path / "label-compare.png"
    label_ten(ana, rows, FIRST, edit_at=0, screenshot=shot)
    assert ana.page.inner_text(".count").startswith("10 / ")
    ana.press_and_wait("u")  # undo the tenth: it is shown again, and labelled again
    assert ana.page.inner_text(".count").startswith("9 / ")
    assert rows[9]["prompt"][9:40] in ana.page.inner_text(".prompt")
    ana.page.keyboard.press(keys_for(ana, rows[9], "r")[0])
    ana.press_and_wait("Enter")
    FIRST[9] = "r"
    ana.assert_nothing_ran()

    ben = Watch(browser, base)
    ben.log_in("ben")
    label_ten(ben, rows, SECOND)
    ben.assert_nothing_ran()

    judgments = live_judgments(project)
    assert [j["name"] for j in judgments].count("ana") == 10 and [j["name"] for j in judgments].count("ben") == 10
    edited = [j for j in judgments if j["edited_text"]]
    assert len(edited) == 1 and edited[0]["edited_text"].endswith(" (Edited: checked the facts.)")
    assert all(j["seconds"] and 0 < j["seconds"] < 120 for j in judgments)  # measured in the page, from load

    boss = Watch(browser, base)
    boss.log_in("boss")
    boss.page.goto(base + "/admin")
    row = boss.page.locator('#kappa tr[data-a="ana"][data-b="ben"], #kappa tr[data-a="ben"][data-b="ana"]')
    shown = float(row.get_attribute("data-kappa"))
    assert shown == pytest.approx(expected_kappa(judgments), abs=1e-12)
    # By hand: they agree on 7 of 10; ana's labels are 5 hh-chosen, 3 other, 1 tie, 1 both bad, ben's 6, 3, 1, 0;
    # chance agreement (5·6 + 3·3 + 1·1) / 100 = 0.4, so κ = (0.7 − 0.4) / (1 − 0.4) = 0.5.
    assert shown == pytest.approx(0.5)
    assert f"{shown:.3f}" in row.inner_text()

    pairs = tmp_path / "pairs.jsonl"
    assert dpokit("label", "export", project, "--output", pairs).returncode == 0
    exported = [json.loads(line) for line in pairs.read_text().splitlines()]
    assert any(r["chosen"].endswith(" (Edited: checked the facts.)") for r in exported)
    with boss.page.expect_download() as download:
        boss.page.click("#export")
    assert [json.loads(line) for line in open(download.value.path())] == exported  # the admin's download is the same
    checked = dpokit("validate", pairs, "--no-tokens")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    run = dpokit("dpo", "--model", tiny_model_dir, "--data", pairs, "--output", tmp_path / "run", "--max-steps", 2,
                 "--batch-size", 2, "--eval-fraction", 0, "--max-length", 256, "--max-prompt-length", 192)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "run" / "final").is_dir()
    if os.environ.get("DPOKIT_UPDATE_SCREENSHOT"):
        shutil.copy(shot, DOCS / "label-compare.png")  # the README's screenshot, refreshed on request


def expected_kappa(judgments) -> float:
    """Cohen's κ from agreement.py on the two annotators' labels of the comparisons both judged: the chosen
    answer's place in the comparison as imported (whatever side it was shown on), tie or both bad."""
    from dpokit.label.agreement import cohen_kappa

    label = {(j["name"], j["comparison_id"]): j["position"] if j["position"] is not None else j["choice"]
             for j in judgments if j["choice"] != "skip"}
    shared = sorted({c for n, c in label if n == "ana"} & {c for n, c in label if n == "ben"})
    return cohen_kappa([label["ana", c] for c in shared], [label["ben", c] for c in shared])


def test_hostile_text_stays_text_in_the_browser(served, browser):
    base, _project, _rows = served
    boss = Watch(browser, base)
    boss.log_in("boss")
    boss.page.goto(base + "/admin")
    boss.page.fill("#guidelines-text", GUIDELINES)
    with boss.page.expect_navigation():
        boss.page.click("text=Save guidelines")
    boss.page.goto(base + "/guidelines")
    assert boss.page.inner_text("h1") == "Pick the helpful one"
    text = boss.page.inner_text(".guidelines")
    assert "<script>window.__xss=1</script>" in text and "<img src=x onerror=alert(1)>" in text
    assert boss.page.locator('a[href^="javascript:"]').count() == 0
    boss.assert_nothing_ran()

    labeller = Watch(browser, base)
    labeller.log_in("boss")  # the admin labels too; the hostile comparisons come after the ten benign ones
    hostile = [HOSTILE["prompt"].split("Human: ")[1].split("\n\n")[0], *HOSTILE["responses"],
               HOSTILE_2["prompt"], *HOSTILE_2["responses"]]
    seen = set()
    for _ in range(14):
        page_text = labeller.page.inner_text("main")
        if "All done" in page_text:
            break
        seen.update(value for value in hostile if value in page_text)  # shown, as text
        assert labeller.page.locator("main img, main svg, main a").count() == 0
        if "</textarea>" in page_text:  # edit the hostile answer: the box holds it as text
            labeller.page.keyboard.press(labeller.side_of(HOSTILE["responses"][1]))
            labeller.page.keyboard.press("e")
            assert labeller.page.input_value("#edited_text") == HOSTILE["responses"][1]
            labeller.page.keyboard.press("Escape")
        labeller.page.keyboard.press("s")
        labeller.press_and_wait("Enter")
        labeller.assert_nothing_ran()
    assert seen == set(hostile)


def test_ranking_view_with_digit_keys(browser, tmp_path):
    """Three answers ranked with the keyboard: 3, 1, 2 gives ranks in that order; Backspace takes the last back."""
    import threading

    import uvicorn

    from dpokit.cli import main
    from dpokit.label.server import create_app
    from dpokit.label.store import open_project

    rows = tmp_path / "rows.jsonl"
    rows.write_text(json.dumps({"prompt": "Greet a new colleague.",
                                "responses": ["Hi.", "Welcome aboard, glad you're here!", "Hello, welcome."]}) + "\n")
    (tmp_path / "password").write_text(PASSWORD + "\n")
    folder = tmp_path / "ranks"
    assert main(["label", "init", str(folder), "--responses", str(rows), "--ranking", "--overlap", "1"]) == 0
    assert main(["label", "add-user", str(folder), "ana", "--password-file", str(tmp_path / "password")]) == 0
    project = open_project(folder)
    server = uvicorn.Server(uvicorn.Config(create_app(project), host="127.0.0.1", port=free_port(), log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        ana = Watch(browser, f"http://127.0.0.1:{server.config.port}")
        ana.log_in("ana")
        shown = [int(n.split("_")[1]) for n in ana.page.eval_on_selector_all(
            'input[name^="rank_"]', "inputs => inputs.map(i => i.name)")]
        for key in ("3", "1", "2", "Backspace", "2"):
            ana.page.keyboard.press(key)
        ranks = ana.page.eval_on_selector_all('input[name^="rank_"]', "inputs => inputs.map(i => i.value)")
        assert ranks == ["2", "3", "1"]
        ana.press_and_wait("Enter")
        assert "All done" in ana.page.inner_text("main")
        ana.assert_nothing_ran()
        with project.session() as session:
            from sqlalchemy import text

            (ranking,) = session.execute(text("SELECT ranking_json FROM judgments")).scalars().all()
        assert json.loads(ranking) == [shown[2], shown[0], shown[1]]
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        project.close()
