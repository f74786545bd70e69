"""Reference-free losses through the real CLI: no reference model is loaded, no reference log-probs are computed or
cached, and their metrics (ORPO's log odds) reach metrics.jsonl; losses combine by weight."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from test_cli_dpo import pairs_file, read_metrics  # noqa: F401  (pairs_file is a fixture)

TINY = ["--max-steps", 2, "--batch-size", 4, "--max-length", 128, "--max-prompt-length", 64, "--learning-rate", 1e-3]


def run_cli(cache, *args):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "DPOKIT_CACHE": str(cache)}
    return subprocess.run([sys.executable, "-m", "dpokit", *map(str, args)], capture_output=True, text=True, env=env,
                          timeout=600)


@pytest.mark.parametrize("loss,extra", [("simpo", ["--beta", 2.0, "--gamma", 0.5]), ("orpo", ["--orpo-lambda", 0.2])])
def test_reference_free_run_has_no_reference(tiny_model_dir, pairs_file, tmp_path, loss, extra):  # noqa: F811
    cache = tmp_path / "cache"
    run = tmp_path / "run"
    result = run_cli(cache, "dpo", "--model", tiny_model_dir, "--data", pairs_file, "--output", run, "--loss", loss,
                     *extra, *TINY)
    assert result.returncode == 0, result.stderr[-2000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["reference"] == "none" and summary["loss"] == loss
    assert not (cache / "reference").exists() or not any((cache / "reference").iterdir())
    train = [m for m in read_metrics(run) if "loss" in m]
    assert len(train) == 2
    if loss == "orpo":
        assert {"log_odds_ratio", "log_odds_chosen"} <= set(train[0])
        assert "eval/log_odds_ratio" in read_metrics(run)[0]
    assert f"loss ({loss})" in result.stdout and "reference-free loss" in result.stdout
    end = summary["eval_end"]
    assert end["eval/pairs"] > 0 and end["eval/rewards/accuracies_ci"][0] <= end["eval/rewards/accuracies"]
    assert summary["verdict"].startswith("Held-out preference") and "its accuracy at the start" in summary["verdict"]
    assert summary["verdict"] in result.stdout


@pytest.mark.slow
def test_sigmoid_with_a_weighted_sft_term_runs_and_differs_from_plain_sigmoid(tiny_model_dir, pairs_file,  # noqa: F811
                                                                              tmp_path):
    losses = {}
    for name, args in (("plain", ["--loss", "sigmoid"]), ("mixed", ["--loss", "sigmoid,sft", "--loss-weights", "1,0.5"])):
        run = tmp_path / name
        result = run_cli(tmp_path / "cache", "dpo", "--model", tiny_model_dir, "--data", pairs_file, "--output", run,
                         *args, *TINY)
        assert result.returncode == 0, result.stderr[-2000:]
        losses[name] = [m["loss"] for m in read_metrics(run) if "loss" in m]
        assert json.loads((run / "summary.json").read_text())["reference"] != "none"
    assert any((tmp_path / "cache" / "reference").iterdir())  # where a reference-free run writes nothing
    # Step 1 sees the same weights and pairs: the mixed loss is the plain one plus 0.5 × the chosen per-token NLL.
    assert losses["mixed"][0] > losses["plain"][0] + 0.5  # a random tiny model's NLL is ~6 nats per token


def test_a_loss_mixing_with_an_unknown_name_is_one_error_line(capsys):
    from dpokit.cli import main

    assert main(["dpo", "--loss", "sigmoid,kto2", "--data", "x.jsonl"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dpokit: error: config: loss: unknown loss 'kto2'") and err.count("\n") == 1
