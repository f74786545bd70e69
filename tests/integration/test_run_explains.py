"""A run says what it will do before the first step and what it drew at the end; data too small to show anything
is refused with the fix."""
from __future__ import annotations

import json

import pytest

from dpokit.cli import main


def test_a_file_smaller_than_a_batch_or_with_no_default_held_out_split_is_refused(tiny_model_dir, tmp_path, capsys):
    rows = [{"prompt": f"Q{i}?", "chosen": f" Yes {i}.", "rejected": f" No {i}."} for i in range(3)]
    data = tmp_path / "three.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    base = ["dpo", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(tmp_path / "run")]
    assert main(base + ["--batch-size", "4"]) == 2
    assert "3 training pairs but --batch-size 4" in capsys.readouterr().err
    assert main(base + ["--batch-size", "2"]) == 2
    assert "holds out no pair of these 3" in capsys.readouterr().err
    assert main(base + ["--batch-size", "2", "--eval-fraction", "0", "--max-steps", "1", "--overwrite"]) == 0
    out = capsys.readouterr().out
    assert "pairs: 3 for training, 0 held out" in out and "1 steps × 2 = 2 pairs drawn" in out
    assert "memory estimate:" in out and "dpokit dpo: 1 steps, 2 drawn from 3 pairs" in out


def test_a_refused_run_leaves_no_folder_it_made_and_keeps_one_that_was_there(tiny_model_dir, tmp_path, capsys):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "p", "chosen": "", "rejected": "r"}\n', encoding="utf-8")
    for command in ("dpo", "sft"):
        run = tmp_path / f"new-{command}"
        assert main([command, "--model", str(tiny_model_dir), "--data", str(data), "--output", str(run)]) == 2
        assert not run.exists()
    mine = tmp_path / "mine"
    mine.mkdir()
    assert main(["dpo", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(mine)]) == 2
    assert mine.is_dir()
    capsys.readouterr()


@pytest.mark.slow
def test_a_run_that_does_not_move_says_so_and_a_learning_one_does_not(tiny_model_dir, tmp_path, capsys):
    rows = [{"prompt": f"Question {i}?", "chosen": f" Yes, {i} is fine.", "rejected": f" Never {i}!"} for i in range(24)]
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    warnings = {}
    for name, rate in (("stuck", "1e-12"), ("learning", "1e-3")):
        run = tmp_path / name
        assert main(["dpo", "--model", str(tiny_model_dir), "--data", str(data), "--output", str(run), "--max-steps",
                     "12", "--batch-size", "4", "--learning-rate", rate, "--eval-fraction", "0.25"]) == 0
        warnings[name] = json.loads((run / "summary.json").read_text())["warnings"]
    assert any(w.startswith("not learning after 12 of 12 steps") for w in warnings["stuck"]), warnings["stuck"]
    assert not any(w.startswith("not learning") for w in warnings["learning"]), warnings["learning"]
    capsys.readouterr()


@pytest.mark.slow
def test_a_breaking_generator_is_warned_about_and_a_healthy_run_is_not(tiny_model_dir, tmp_path, capsys):
    """The issue's case: the preference figures of a run can look fine while its answers break. A learning rate 20×
    the tiny model's usual one moves the probe's greedy answers far from the reference's (KL per token past 0.5); the
    usual one does not."""
    # Verbatim prompts: through the chat template this random tiny model answers every probe prompt with one token
    # repeated (97% repeated 4-grams at step 0) and keeps doing so at any learning rate, which leaves the probe
    # nothing to tell apart; SmolLM2's own answers are prose either way (docs/default-run-sweep.md).
    base = ["dpo", "--model", str(tiny_model_dir), "--max-steps", "8", "--batch-size", "4", "--eval-fraction", "0.1",
            "--max-eval-pairs", "16", "--max-length", "128", "--max-prompt-length", "64", "--eval-every", "4",
            "--no-chat-template"]

    def run(lr: str) -> dict:
        out = tmp_path / f"lr{lr}"
        assert main(base + ["--learning-rate", lr, "--output", str(out)]) == 0
        return json.loads((out / "summary.json").read_text())

    broken, healthy = run("2e-2"), run("1e-3")
    drift = [w for w in broken["warnings"] if "generation is drifting" in w]
    assert len(drift) == 1 and "nats per token" in drift[0]
    assert not [w for w in healthy["warnings"] if "generation is drifting" in w]
    lines = [json.loads(x) for x in (tmp_path / "lr1e-3" / "probe.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [0, 4, 8] and all(len(x["answers"]) == 4 for x in lines)
    assert [set(item) for item in healthy["probe"]] == [{"prompt", "before", "after", "step"}] * 2
    assert "step 0:" in capsys.readouterr().out  # the answers before and after, printed at the end
