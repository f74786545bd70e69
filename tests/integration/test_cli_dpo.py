"""`dpokit dpo` end to end on a tiny random model: real CLI, real files."""
import gzip
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tiny import ASSETS

ENV_THREADS = {"OMP_NUM_THREADS": "1"}  # tiny models run fastest on one thread


def dpokit(*args, cwd=None):
    import os

    env = {**os.environ, **ENV_THREADS}
    return subprocess.run([sys.executable, "-m", "dpokit", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=600)


def hh_rows(n):
    with gzip.open(ASSETS / "hh_rlhf_harmless_sample.jsonl.gz", "rt", encoding="utf-8") as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in hh_rows(32)), encoding="utf-8")
    return path


def read_metrics(run: Path):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_thirty_steps_loss_falls_accuracy_rises_and_final_model_generates(tiny_model_dir, pairs_file, tmp_path):
    run = tmp_path / "run"
    result = dpokit("dpo", "--model", tiny_model_dir, "--data", pairs_file, "--eval-data", pairs_file,
                    "--output", run, "--max-steps", 30, "--batch-size", 8, "--learning-rate", 1e-3, "--beta", 0.1,
                    "--eval-every", 10, "--max-length", 192, "--max-prompt-length", 96)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "held-out" in result.stdout and "reward accuracy" in result.stdout
    metrics = read_metrics(run)
    train = [m for m in metrics if "loss" in m]
    evals = [m for m in metrics if "eval/loss" in m]
    assert [m["step"] for m in train] == list(range(1, 31))
    assert evals[0]["step"] == 0 and evals[0]["eval/loss"] == pytest.approx(math.log(2), abs=1e-6)
    first, last = train[:5], train[-5:]
    mean = lambda rows, k: sum(r[k] for r in rows) / len(rows)  # noqa: E731
    assert mean(last, "loss") < mean(first, "loss") - 0.2
    assert mean(last, "rewards/accuracies") > mean(first, "rewards/accuracies") + 0.3
    assert evals[-1]["step"] == 30 and evals[-1]["eval/rewards/accuracies"] >= 0.8
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "logps/rejected",
                "grad_norm", "lr", "tokens", "tokens_per_s"):
        assert key in train[0]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(run / "final")
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    assert tokenizer.chat_template
    ids = tokenizer("\n\nHuman: hello\n\nAssistant:", return_tensors="pt")["input_ids"]
    out = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == ids.shape[1] + 5
    saved = __import__("yaml").safe_load((run / "config.yaml").read_text())
    assert saved["max_steps"] == 30 and saved["learning_rate"] == 1e-3


@pytest.mark.slow
def test_resume_from_checkpoint_equals_uninterrupted(tiny_model_dir, pairs_file, tmp_path):
    common = ["--model", tiny_model_dir, "--data", pairs_file, "--max-steps", 6, "--batch-size", 4,
              "--learning-rate", 1e-3, "--eval-fraction", 0.25, "--max-length", 128, "--max-prompt-length", 64]
    straight, interrupted = tmp_path / "a", tmp_path / "b"
    assert dpokit("dpo", *common, "--output", straight).returncode == 0
    assert dpokit("dpo", *common, "--output", interrupted, "--save-every", 3).returncode == 0
    # Pretend the second run died after its step-3 checkpoint: drop what came later.
    import shutil

    shutil.rmtree(interrupted / "final")
    result = dpokit("dpo", *common, "--output", interrupted, "--save-every", 3, "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    from safetensors.torch import load_file

    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(interrupted / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [m["step"] for m in read_metrics(interrupted)]
    assert steps == sorted(set(steps)) and steps[-1] == 6 and steps[0] == 0


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


GOOD = json.dumps({"prompt": "Hi", "chosen": " yes", "rejected": " no"})


@pytest.mark.parametrize("lines, expected", [
    ([GOOD, GOOD.replace("}", ""), GOOD], "bad.jsonl:2"),
    ([GOOD, json.dumps({"prompt": "Hi", "chosen": " a"})], "rejected"),
    ([json.dumps({"prompt": "Hi", "chosen": "", "rejected": " b"})], "chosen"),
    ([json.dumps({"prompt": "Hi", "chosen": 3, "rejected": " b"})], "chosen"),
])
def test_malformed_data_gives_one_line_and_exit_2(tiny_model_dir, tmp_path, lines, expected):
    data = write_lines(tmp_path / "bad.jsonl", lines)
    result = dpokit("dpo", "--model", tiny_model_dir, "--data", data, "--output", tmp_path / "run")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("dpokit: error:")]
    assert len(error_lines) == 1 and "bad.jsonl" in error_lines[0] and expected in error_lines[0]


def test_missing_model_and_output_in_use_exit_2(tiny_model_dir, pairs_file, tmp_path):
    from dpokit.cli import main

    assert main(["dpo", "--model", str(tmp_path / "nope"), "--data", str(pairs_file),
                 "--output", str(tmp_path / "r")]) == 2
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("precious")
    assert main(["dpo", "--model", str(tiny_model_dir), "--data", str(pairs_file), "--output", str(used)]) == 2
    assert (used / "keep.txt").read_text() == "precious"  # nothing was touched


def test_error_messages_name_the_problem(tiny_model_dir, pairs_file, tmp_path, capsys):
    from dpokit.cli import main

    main(["dpo", "--model", str(tmp_path / "nope"), "--data", str(pairs_file)])
    assert "does not exist" in capsys.readouterr().err
    cfg = tmp_path / "c.yaml"
    cfg.write_text("beta: 0.2\nlearning_rat: 1e-6\n")
    assert main(["dpo", "--config", str(cfg)]) == 2
    assert "learning_rat" in capsys.readouterr().err
    assert main(["dpo", "--loss", "hinge", "--label-smoothing", "0.1", "--data", str(pairs_file)]) == 2
    assert "label_smoothing" in capsys.readouterr().err


def help_text(capsys, *command) -> str:
    """`dpokit COMMAND --help`, in this process (a subprocess per command took 17 s of the suite)."""
    from dpokit.cli import main

    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code in (0, None), command
    return capsys.readouterr().out


def test_help_lists_flags(capsys):
    text = help_text(capsys, "dpo")
    for flag in ("--model", "--ref", "--data", "--eval-data", "--output", "--loss", "--beta", "--learning-rate",
                 "--batch-size", "--grad-accum", "--max-length", "--max-prompt-length", "--max-steps", "--epochs",
                 "--seed", "--eval-every", "--save-every", "--resume", "--overwrite", "--config"):
        assert flag in text
    assert "10% lower" in text  # a literal % in a field's help text (argparse %-formats help)
    for command in ("sft", "coh", "pipeline", "plan", "eval"):
        assert "--help" in help_text(capsys, command), command
    assert "validate" in help_text(capsys)
    assert dpokit("dpo", "--help").returncode == 0  # and once as the installed command runs it


def test_validate_command_reports_shape_and_counts(tmp_path):
    data = write_lines(tmp_path / "v.jsonl", [GOOD, json.dumps({"prompt": "Hi", "chosen": " x", "rejected": " x"})])
    result = dpokit("validate", data, "--no-tokens")
    assert "standard" in result.stdout and "identical" in result.stdout
    assert result.returncode == 1


@pytest.mark.slow
def test_attention_flag_reaches_the_model_and_gives_the_same_run(tiny_model_dir, pairs_file, tmp_path):
    from dpokit.models import load_model

    assert load_model(tiny_model_dir, attention="eager").config._attn_implementation == "eager"
    assert load_model(tiny_model_dir).config._attn_implementation == "sdpa"
    runs = {}
    for attention in ("sdpa", "eager"):
        run = tmp_path / attention
        result = dpokit("dpo", "--model", tiny_model_dir, "--data", pairs_file, "--output", run, "--max-steps", 3,
                        "--batch-size", 4, "--learning-rate", 1e-3, "--eval-fraction", 0, "--attention", attention)
        assert result.returncode == 0, result.stderr[-2000:]
        assert f"attention: {attention}" in (run / "config.yaml").read_text()
        runs[attention] = [m["loss"] for m in read_metrics(run)]
    assert len(runs["eager"]) == 3 and runs["eager"][-1] != runs["eager"][0]  # it trained
    assert runs["eager"] == pytest.approx(runs["sdpa"], rel=1e-5)  # shared layout's mask means the same to both


def test_flash_attention_needs_the_padded_layout_and_a_gpu(tiny_model_dir, pairs_file, tmp_path):
    shared = dpokit("dpo", "--model", tiny_model_dir, "--data", pairs_file, "--output", tmp_path / "a",
                    "--attention", "flash_attention_2")
    assert shared.returncode == 2 and "Traceback" not in shared.stderr
    assert "config: attention:" in shared.stderr and "--layout padded" in shared.stderr
    if not torch.cuda.is_available():
        padded = dpokit("dpo", "--model", tiny_model_dir, "--data", pairs_file, "--output", tmp_path / "b",
                        "--attention", "flash_attention_2", "--layout", "padded", "--max-steps", 1)
        assert padded.returncode == 2 and "needs a CUDA GPU and the flash-attn package" in padded.stderr
        assert "Traceback" not in padded.stderr
