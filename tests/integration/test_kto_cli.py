"""`dpokit validate` and `dpokit dpo --loss kto` on a thumbs-up/down file and on a pair file, through the real CLI;
a feedback file given to a pair loss is one error line."""
from __future__ import annotations

import json

import pytest

from dpokit.cli import main
from test_cli_dpo import pairs_file, read_metrics  # noqa: F401  (pairs_file is a fixture)
from test_reference_free_cli import TINY, run_cli


def thumbs(path, n=16):
    rows = [{"prompt": f"Question {i}: is it safe?", "completion": f" Yes, item {i} is fine." if i % 3 else
             f" Never {i}!", "label": "up" if i % 3 else "down"} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_validate_reports_feedback_counts(tmp_path, capsys):
    assert main(["validate", str(thumbs(tmp_path / "fb.jsonl")), "--no-tokens"]) == 0
    out = capsys.readouterr().out
    assert "shape:       unpaired" in out and "examples:    16 (10 desirable, 6 undesirable): for --loss kto" in out


@pytest.mark.slow
def test_kto_trains_on_thumbs_with_a_cached_reference_and_on_pairs(tiny_model_dir, pairs_file, tmp_path):  # noqa: F811
    data = thumbs(tmp_path / "fb.jsonl")
    for name, path, shape in (("thumbs", data, "unpaired"), ("pairs", pairs_file, "hh_rlhf")):
        run = tmp_path / name
        result = run_cli(tmp_path / "cache", "dpo", "--model", tiny_model_dir, "--data", path, "--output", run,
                         "--loss", "kto", "--undesirable-weight", 1.5, "--eval-fraction", 0.25, *TINY)
        assert result.returncode == 0, result.stderr[-2000:]
        summary = json.loads((run / "summary.json").read_text())
        assert summary["data"]["shape"] == shape and summary["reference"] not in ("none", "live")  # the cache file
        counts = summary["data"]["feedback"]
        assert (counts["desirable"], counts["undesirable"]) == ((10, 6) if name == "thumbs" else (32, 32))
        train = [m for m in read_metrics(run) if "loss" in m]
        assert len(train) == 2 and {"kl", "desirable"} <= set(train[0])
        low, high = summary["eval_end"]["eval/rewards/margins_ci"]
        assert low <= summary["eval_end"]["eval/rewards/margins"] <= high and "chance, 0.5" in summary["verdict"]


def test_feedback_given_to_a_pair_loss_is_one_error_line(tiny_model_dir, tmp_path, capsys):
    code = main(["dpo", "--model", str(tiny_model_dir), "--data", str(thumbs(tmp_path / "fb.jsonl")),
                 "--output", str(tmp_path / "run"), "--loss", "sigmoid"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith("dpokit: error: fb.jsonl:1: row shape 'unpaired' (prompt, completion, label: thumbs-up/down "
                          "feedback) fits --loss kto")

