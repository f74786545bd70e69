"""`dpokit iterate --judge human:PROJECT` on the tiny model and a SQLite label project: a round's samples are pushed
into the project and the run stops (exit code 4); a resume before judging pushes nothing twice; once two annotators
have judged through dpokit.label.tasks, a resume trains the round on pairs whose chosen answers are theirs."""
import json

import pytest
from sqlalchemy import func, select

from dpokit.cli import EXIT_WAITING, main
from dpokit.label import store
from dpokit.label.tasks import next_task, record_judgment
from dpokit.label.users import add_user

PROMPTS = ["Name a fruit.", "Say something kind.", "What is the sky like?", "Count to three.", "Describe a cat.",
           "Give me a word.", "Where is the sea?", "Tell a short joke."]
SETTINGS = ["--rounds", "1", "--samples-per-prompt", "2", "--prompts-per-round", "4", "--eval-prompts", "2",
            "--eval-samples", "2", "--max-new-tokens", "8", "--batch-size", "2", "--max-steps", "2",
            "--max-length", "128", "--max-prompt-length", "64", "--allow-truncated-chosen"]


@pytest.fixture
def setup(tmp_path, monkeypatch):
    monkeypatch.setenv("DPOKIT_CACHE", str(tmp_path / "cache"))
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    seed = tmp_path / "seed.jsonl"  # the project's own comparison, there before iterate adds its rounds
    seed.write_text(json.dumps({"prompt": "Hi", "responses": ["hello", "hey there"]}) + "\n")
    project = tmp_path / "proj"
    assert main(["label", "init", str(project), "--responses", str(seed), "--overlap", "2"]) == 0
    return prompts, project


def iterate(model_dir, prompts, judge, out, *extra):
    return main(["iterate", "--model", str(model_dir), "--prompts", str(prompts), "--judge", judge,
                 "--output", str(out), *SETTINGS, *extra])


def comparisons(folder) -> int:
    project = store.open_project(folder)
    try:
        with project.session() as session:
            return session.scalar(select(func.count(store.Comparison.id)))
    finally:
        project.close()


def judge_all(folder) -> dict[int, str]:
    """Two annotators judge every comparison, both picking the longer answer: comparison id → the picked text."""
    project = store.open_project(folder)
    picked = {}
    try:
        for name in ("alice", "bob"):
            annotator = add_user(project, name, "password1")
            while (task := next_task(project, annotator)) is not None:
                assert task.kind == "pair"  # K = 2: two answers a prompt
                best = max((0, 1), key=lambda i: (len(task.responses[i].text), task.responses[i].text))
                picked[task.comparison_id] = task.responses[best].text
                record_judgment(project, annotator, task.assignment_id, choice=("left", "right")[best])
    finally:
        project.close()
    return picked


def test_a_round_waits_for_people_then_trains_on_their_choices(tiny_model_dir, setup, tmp_path, capsys):
    prompts, project = setup
    run = tmp_path / "run"
    assert iterate(tiny_model_dir, prompts, f"human:{project}", run) == EXIT_WAITING == 4
    pushed = comparisons(project) - 1
    assert 2 <= pushed <= 4  # one pair per prompt with two distinct answers
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"{pushed} of {pushed} comparisons wait for 2 judgments each in {project}" in line
    assert f"dpokit label serve {project}" in line and "--resume" in line

    # resumed before anyone judged: it stops again and adds nothing
    assert iterate(tiny_model_dir, prompts, f"human:{project}", run, "--resume") == EXIT_WAITING
    assert comparisons(project) - 1 == pushed
    assert f"{pushed} of {pushed} comparisons wait" in capsys.readouterr().out

    picked = judge_all(project)
    assert iterate(tiny_model_dir, prompts, f"human:{project}", run, "--resume") == 0
    assert comparisons(project) - 1 == pushed
    pairs = [json.loads(line) for line in (run / "round-1" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == pushed  # both annotators agreed on every comparison
    text = lambda answer: answer if isinstance(answer, str) else answer[0]["content"]  # noqa: E731
    for pair in pairs:
        cid = int(pair["origin"].rsplit("comparison=", 1)[1])
        assert pair["origin"].startswith("round-1:label:")
        assert text(pair["chosen"]) == picked[cid] != text(pair["rejected"])
    rounds = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1] and rounds[1]["pairs"] == pushed
    assert "reward" not in rounds[1] and rounds[1]["kl"] >= 0  # nobody judges held-out samples
    assert (run / "round-1" / "train" / "final" / "model.safetensors").is_file()


@pytest.mark.parametrize("online", [False, True])
def test_a_bad_project_or_online_is_one_error_line(tiny_model_dir, setup, tmp_path, capsys, online):
    prompts, project = setup
    settings = [a for a in SETTINGS if a not in ("--rounds", "1")] + ["--online"] if online else SETTINGS
    code = main(["iterate", "--model", str(tiny_model_dir), "--prompts", str(prompts), "--judge",
                 f"human:{project if online else tmp_path / 'nowhere'}", "--output", str(tmp_path / "run"), *settings])
    err = capsys.readouterr().err.strip().splitlines()
    expected = "drop --online" if online else "no labeling project there"
    assert code == 2 and len(err) == 1 and err[0].startswith("dpokit: error:") and expected in err[0], err
    assert not (tmp_path / "run").exists()


def test_round_pairs_follow_the_majority_and_drop_ties_and_cut_off_winners(setup, tmp_path):
    """Without a model: K = 2 prompts become pairs, a K = 3 prompt one ranking (its best vs its worst); a tie is
    dropped, and so is a winner that was cut off (no EOS) unless --allow-truncated-chosen."""
    from types import SimpleNamespace

    from dpokit.judges.human import HumanJudge, JudgmentsPending

    _, folder = setup
    answers = {0: [("short", True), ("longer answer", False)], 1: [("a", True), ("bb", True)],
               2: [("x", True), ("yy", True)], 3: [("one", True), ("seventeen", True), ("three", True)]}
    rows = [{"prompt_index": p, "sample": s, "prompt": f"prompt {p}", "response": text, "ended": ended, "seed": 7}
            for p, group in answers.items() for s, (text, ended) in enumerate(group)]
    config = SimpleNamespace(seed=0, temperature=1.0, top_p=1.0, max_new_tokens=8, model="tiny",
                             pairing="best-vs-worst", allow_truncated_chosen=False)
    judge = HumanJudge.open(str(folder), f"human:{folder}")
    for _ in range(2):  # the second call adds nothing
        with pytest.raises(JudgmentsPending) as pending:
            judge.round_pairs(rows, tmp_path, 1, config)
        assert pending.value.waiting == 4 and comparisons(folder) == 1 + 4
    project = store.open_project(folder)
    try:
        for name in ("alice", "bob"):
            annotator = add_user(project, name, "password1")
            while (task := next_task(project, annotator)) is not None:
                texts = [s.text for s in task.responses]
                if task.kind == "rank":
                    order = sorted(task.responses, key=lambda s: len(s.text), reverse=True)
                    record_judgment(project, annotator, task.assignment_id, choice="rank",
                                    ranking=[s.response_id for s in order])
                elif "yy" in texts:
                    record_judgment(project, annotator, task.assignment_id, choice="tie")
                else:
                    longer = max((0, 1), key=lambda i: len(texts[i]))
                    record_judgment(project, annotator, task.assignment_id, choice=("left", "right")[longer])
    finally:
        project.close()
    pairs, dropped = judge.round_pairs(rows, tmp_path, 1, config)
    assert sorted((p["chosen"], p["rejected"]) for p in pairs) == [("bb", "a"), ("seventeen", "one")]
    assert dropped == {"tie": 1, "truncated_chosen": 1}
    pairs, dropped = judge.round_pairs(rows, tmp_path, 1, SimpleNamespace(**{**vars(config),
                                                                             "allow_truncated_chosen": True}))
    assert ("longer answer", "short") in [(p["chosen"], p["rejected"]) for p in pairs] and dropped == {"tie": 1}
