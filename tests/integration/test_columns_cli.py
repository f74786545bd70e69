"""Column mappings and ranked lists through the real CLI: bad input is one error line (file, line, mapped path), exit
2 and no file written; real files of other tools' shapes train without a conversion script; provenance reaches
`dpokit eval`'s per-pair rows."""
from __future__ import annotations

import json

import pytest
import yaml

from dpokit.cli import main
from tiny import SHARED_DATA
from test_cli_dpo import dpokit, read_metrics

MAP = "prompt=question,chosen=answers[0],rejected=answers[-1]"


def write_rows(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def good_rows(n=8):
    return [{"question": f"What is {i} plus {i}?", "answers": [f"It is {2 * i}.", "No idea.", f"{i}{i}"]}
            for i in range(n)]


@pytest.mark.parametrize("bad_row,args,message", [
    ({"question": "q?", "answers": ["x"]}, ["--columns", "prompt=question,chosen=answers[0],rejected=answers[1]"],
     "rows.jsonl:9: mapped field 'answers[1]' (for rejected): 'answers' has 1 item, so [1] does not exist"),
    ({"q": "q?", "answers": ["x", "y"]}, ["--columns", MAP],
     "rows.jsonl:9: mapped field 'question' (for prompt): the row has no field 'question'"),
    ({"question": "q?", "answers": ["only"]}, ["--columns", "prompt=question,responses=answers"],
     "rows.jsonl:9: field 'responses' has 1 answer; a ranked list needs at least 2 to make a pair (responses is "
     "mapped from 'answers')"),
    ({"question": "q?", "answers": ["x", "y"], "s": [1, "high"]}, ["--columns", "prompt=question,responses=answers,scores=s"],
     "rows.jsonl:9: field 'scores[1]' must be a finite number, got str 'high' (scores is mapped from 's')"),
    ({"question": "q?", "answers": ["x", "y"], "r": [1, 1]}, ["--columns", "prompt=question,responses=answers,ranks=r"],
     "rows.jsonl:9: rank 1 appears twice in 'ranks' (items 0 and 1); ranks must be distinct (give scores instead "
     "to express a tie) (ranks is mapped from 'r')"),
])
def test_bad_rows_are_one_error_line_exit_2_nothing_written(tiny_model_dir, tmp_path, capsys, bad_row, args, message):
    rows = good_rows()
    if "scores=s" in args[1]:
        rows = [{**r, "s": [3, 2, 1]} for r in rows]
    if "ranks=r" in args[1]:
        rows = [{**r, "r": [1, 2, 3]} for r in rows]
    data = write_rows(tmp_path / "rows.jsonl", rows + [bad_row])
    run = tmp_path / "run"
    code = main(["dpo", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(run), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("dpokit: error: " + message), err
    assert not run.exists()  # nothing written, not even an empty run folder


def test_a_bad_mapping_is_a_config_error(tmp_path, capsys):
    code = main(["validate", "x.jsonl", "--no-tokens", "--columns", "question=q"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("dpokit: error: --columns: unknown target 'question'") and err.count("\n") == 1
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"columns": {"prompt": "a[x]"}}))
    code = main(["dpo", "--config", str(config), "--data", "x.jsonl"])
    err = capsys.readouterr().err
    assert code == 2 and "c.yaml: columns: path 'a[x]'" in err and err.count("\n") == 1


def test_validate_shows_the_mapped_row_and_list_counts(tmp_path, capsys):
    rows = [{"question": "q1", "answers": ["a", "b", "c"], "s": [1, 3, 1]},
            {"question": "q2", "answers": ["a", "b"], "s": [2, 2]}]
    data = write_rows(tmp_path / "rows.jsonl", rows)
    code = main(["validate", str(data), "--no-tokens", "--columns", "prompt=question,responses=answers,scores=s",
                 "--pairs", "all-pairs"])
    out = capsys.readouterr().out
    assert code == 0
    assert 'first row, mapped: {"prompt": "q1", "responses": ["a", "b", "c"], "scores": [1, 3, 1]}' in out
    assert "lists:       2 ranked rows → 2 pairs (all-pairs); dropped: tie 2" in out
    assert "first pair:  rows.jsonl:1 (responses[1] over responses[0])" in out


@pytest.mark.slow
def test_ranked_list_from_yaml_trains_and_eval_rows_name_the_answers(tiny_model_dir, tmp_path):
    """A YAML `columns:` mapping and `pairs:` policy: 2 steps of DPO, then `dpokit eval --split heldout` reads the data
    the way the run did and its per-pair rows name the two answers each pair came from."""
    rows = [{"question": f"Question {i}?", "answers": [{"text": f"Answer {i}."}, {"text": "Hm."}, {"text": "..."}],
             "grades": [3, 2, 1]} for i in range(12)]
    data = write_rows(tmp_path / "ranked.jsonl", rows)
    run = tmp_path / "run"
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": str(tiny_model_dir), "data": str(data), "output": str(run), "max_steps": 2, "batch_size": 4,
        "eval_fraction": 0.25, "max_length": 64, "max_prompt_length": 32, "learning_rate": 1e-3, "loss": "odpo",
        "columns": {"prompt": "question", "responses": "answers[*].text", "scores": "grades"},
        "pairs": "best-vs-each"}))
    result = dpokit("dpo", "--config", config)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ranked lists: 12 rows → 24 pairs (best-vs-each)" in result.stdout
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"]["lists"] == {"policy": "best-vs-each", "rows": 12, "pairs": 24, "dropped": {}}
    assert summary["data"]["columns"] == "prompt=question,responses=answers[*].text,scores=grades"
    assert summary["pairs"] == {"train": 18, "eval": 6}  # 3 of 12 prompts held out, 2 pairs each
    assert len([m for m in read_metrics(run) if "loss" in m]) == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["columns"] == summary["data"]["columns"]

    result = dpokit("eval", "--model", run, "--split", "heldout", "--max-length", 64, "--max-prompt-length", 32)
    assert result.returncode == 0, result.stderr[-2000:]
    pairs = [json.loads(line) for line in (run / "eval-heldout" / "pairs.jsonl").read_text().splitlines()]
    assert len(pairs) == 6
    assert {p["origin"].split(" ", 1)[1] for p in pairs} == {"(responses[0] over responses[1])",
                                                             "(responses[0] over responses[2])"}
    assert all(p["origin"].startswith("ranked.jsonl:") for p in pairs)
    evaluated = json.loads((run / "eval-heldout" / "summary.json").read_text())
    assert evaluated["pairs"] == 6 and len(evaluated["rewards/accuracies_ci"]) == 2


needs_shared = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared/data is not beside the checkout")


@needs_shared
@pytest.mark.slow
def test_self_instruct_seed_tasks_train_sft_through_a_mapping(tiny_model_dir, tmp_path):
    """yizhongw/self-instruct's seed tasks (instruction + instances[0].input → prompt, instances[0].output → answer):
    a shape no adapter knows, trained 2 steps with no conversion script."""
    run = tmp_path / "sft"
    result = dpokit("sft", "--model", tiny_model_dir, "--data", SHARED_DATA / "self-instruct-seed/seed_tasks.jsonl.gz",
                    "--columns", "prompt=instruction+instances[0].input,completion=instances[0].output",
                    "--output", run, "--max-steps", 2, "--batch-size", 4, "--max-length", 128)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["data"]["rows"] == 175 and summary["data"]["dropped"] == {}
    assert summary["data"]["shape"] == "prompt_completion"
    assert len([m for m in read_metrics(run) if "loss" in m]) == 2


@needs_shared
def test_ultrafeedback_scores_map_to_margins_for_odpo(tiny_model_dir, tmp_path, capsys):
    data = SHARED_DATA / "ultrafeedback-binarized-subset/train_clean.jsonl.gz"
    columns = "chosen=chosen,rejected=rejected,score_chosen=metadata.score_chosen,score_rejected=metadata.score_rejected"
    assert main(["validate", str(data), "--no-tokens", "--columns", columns]) == 1  # 4 identical pairs, 2 empty answers
    out = capsys.readouterr().out
    assert "valid pairs: 994" in out and "dropped:     6 (empty_completion 2, identical 4)" in out and "  strength:  1" in out
    run = tmp_path / "odpo"
    result = dpokit("dpo", "--model", tiny_model_dir, "--data", data, "--columns", columns, "--skip-invalid",
                    "--loss", "odpo", "--output", run, "--max-steps", 2, "--batch-size", 4, "--max-length", 128,
                    "--max-prompt-length", 64, "--max-eval-pairs", 8)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((run / "summary.json").read_text())["data"]["dropped"] == {"empty_completion": 2, "identical": 4}
