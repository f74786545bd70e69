"""Non-finite steps, checkpoint pruning, pickle refusal and the up-front memory check."""
import json

import pytest

from dpokit.cli import main
from dpokit.config import DPOConfig
from dpokit.errors import NonFiniteError, UserError
from dpokit.memory import check_fits, estimate
from dpokit.models import resolve_model_path
from dpokit.api import train
from dpokit.train import loop as loop_module


@pytest.fixture()
def pairs_file(tmp_path):
    rows = [{"prompt": f"Question {i}?", "chosen": f" Good answer {i}.", "rejected": f" Bad {i}!"} for i in range(12)]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def poison_step(model, bad_step: int):
    """Make the loss NaN on one training step (1-based): a forward hook on the model object's decoder turns its
    hidden states to NaN on that step's forward (one micro-batch per step here; the lean LM head reads them)."""
    calls = {"n": 0}

    def hook(module, inputs, output):
        if module.training:
            calls["n"] += 1
            if calls["n"] == bad_step:
                output.last_hidden_state = output.last_hidden_state * float("nan")
        return output

    model.model.register_forward_hook(hook)
    return model


def base_args(model_dir, data, out):
    return ["dpo", "--model", str(model_dir), "--data", str(data), "--output", str(out), "--batch-size", "4",
            "--max-steps", "5", "--learning-rate", "1e-3", "--eval-fraction", "0", "--max-length", "64",
            "--max-prompt-length", "32"]


def api_config(data, out, **extra):
    return DPOConfig(data=str(data), output=str(out), batch_size=4, max_steps=5, learning_rate=1e-3, eval_fraction=0,
                     max_length=64, max_prompt_length=32, **extra)


def poisoned_model(model_dir, bad_step):
    from dpokit.models import load_model, load_tokenizer

    return poison_step(load_model(model_dir), bad_step), load_tokenizer(model_dir)


def test_nonfinite_stops_with_step_and_pairs_keeping_checkpoint(tiny_model_dir, pairs_file, tmp_path):
    model, tokenizer = poisoned_model(tiny_model_dir, bad_step=4)
    out = tmp_path / "run"
    with pytest.raises(NonFiniteError) as stopped:
        train(model, None, api_config(pairs_file, out, save_every=2), tokenizer=tokenizer)
    assert "step 4" in str(stopped.value) and "train.jsonl:" not in str(stopped.value)
    assert "pairs.jsonl:" in str(stopped.value) and "checkpoint-2" in str(stopped.value)
    assert (out / "checkpoint-2" / "model.safetensors").is_file()
    assert NonFiniteError.exit_code == 3  # what `dpokit dpo` exits with (cli.EXIT_CODES)


def test_skip_nonfinite_counts_and_finishes(tiny_model_dir, pairs_file, tmp_path):
    model, tokenizer = poisoned_model(tiny_model_dir, bad_step=2)
    out = tmp_path / "run"
    run = train(model, None, api_config(pairs_file, out, skip_nonfinite=True), tokenizer=tokenizer)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["skipped_nonfinite"] == run.summary["skipped_nonfinite"] == 1
    last = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["step"] == 5 and last["skipped_nonfinite"] == 1


def test_keep_checkpoints_prunes_old_ones(tiny_model_dir, pairs_file, tmp_path):
    out = tmp_path / "run"
    assert main(base_args(tiny_model_dir, pairs_file, out) + ["--max-steps", "6", "--save-every", "1",
                                                              "--keep-checkpoints", "2"]) == 0
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-5"]
    assert not list(out.glob(".checkpoint-*"))  # no temporary folder left behind


def test_pickle_weights_refused_unless_allowed(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"not really")
    with pytest.raises(UserError, match="--allow-pickle"):
        resolve_model_path(str(folder))
    assert resolve_model_path(str(folder), allow_pickle=True) == folder


def test_memory_check_stops_with_settings_that_fit(tiny_model_dir, monkeypatch):
    est = estimate(tiny_model_dir, dtype="float32", micro_batch_pairs=4, max_length=128, separate_reference=True)
    assert est.weights == est.gradients == est.optimizer // 2 == est.reference > 0
    monkeypatch.setattr("dpokit.memory.available_bytes", lambda device: est.total - est.activations / 2)
    with pytest.raises(UserError, match="grad-accum"):
        check_fits(est, device="cpu", micro_batch_pairs=4, max_length=128)
    monkeypatch.setattr("dpokit.memory.available_bytes", lambda device: est.total + 1)
    check_fits(est, device="cpu", micro_batch_pairs=4, max_length=128)  # fits: no error


def test_memory_estimate_scales_with_batch_and_length(tiny_model_dir):
    from dpokit import memory

    def estimate(pairs=1, length=64, live=False):
        return memory.estimate(tiny_model_dir, dtype="float32", micro_batch_pairs=pairs, max_length=length,
                               separate_reference=live)

    one = estimate()
    assert estimate(pairs=2).activations == 2 * one.activations > 0  # activations grow with the batch ...
    assert estimate(length=128).activations == 2 * one.activations  # ... and with the length, linearly
    assert estimate(pairs=2).weights == one.weights and one.reference == 0
    assert estimate(live=True).reference == one.weights  # a live reference is a second copy of the weights
    assert one.total == sum((one.weights, one.gradients, one.optimizer, one.reference, one.activations, one.runtime))


def test_run_writes_a_report_png_with_content(tiny_model_dir, pairs_file, tmp_path):
    import numpy as np
    from PIL import Image

    out = tmp_path / "run"
    assert main(base_args(tiny_model_dir, pairs_file, out) + ["--eval-fraction", "0.25"]) == 0
    pixels = np.asarray(Image.open(out / "report.png").convert("L"))
    assert pixels.shape[0] > 300 and pixels.shape[1] > 500
    assert (pixels < 128).mean() > 0.01  # lines and text drawn, not a blank canvas
    assert main(["report", str(out)]) == 0


def test_full_disk_mid_run_gives_one_line_and_keeps_last_checkpoint(tiny_model_dir, pairs_file, tmp_path, monkeypatch,
                                                                    capsys):
    import errno

    from dpokit.train import checkpoint as ckpt

    real = ckpt.save_checkpoint
    calls = {"n": 0}

    def failing_save(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint hits a full disk half-way
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / ".checkpoint-4.tmp"))
        return real(*args, **kwargs)

    monkeypatch.setattr(loop_module, "save_checkpoint", failing_save)
    out = tmp_path / "run"
    code = main(base_args(tiny_model_dir, pairs_file, out) + ["--save-every", "2"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "dpokit: error:" in line]
    assert code == 2 and len(errors) == 1 and "No space left on device" in errors[0] and "Traceback" not in err
    assert (out / "checkpoint-2" / "step.json").is_file()
    assert main(base_args(tiny_model_dir, pairs_file, out) + ["--save-every", "2", "--resume"]) == 0


def test_read_only_output_location_is_one_line(tiny_model_dir, pairs_file, tmp_path, monkeypatch, capsys):
    import errno
    from pathlib import Path

    def read_only(self, *a, **k):
        raise OSError(errno.EROFS, "Read-only file system", str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    assert main(base_args(tiny_model_dir, pairs_file, tmp_path / "ro" / "run")) == 2
    err = capsys.readouterr().err
    assert "Read-only file system" in err and err.startswith("dpokit: error:")


def test_gradient_checkpointing_and_bf16_autocast_train(tiny_model_dir, pairs_file, tmp_path):
    read = lambda d: [json.loads(x)["loss"] for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    plain, ckpt, bf16 = tmp_path / "plain", tmp_path / "ckpt", tmp_path / "bf16"
    assert main(base_args(tiny_model_dir, pairs_file, plain)) == 0
    assert main(base_args(tiny_model_dir, pairs_file, ckpt) + ["--gradient-checkpointing"]) == 0
    assert read(ckpt) == pytest.approx(read(plain), rel=1e-5)  # recomputation changes memory, not numbers
    assert main(base_args(tiny_model_dir, pairs_file, bf16) + ["--mixed-precision", "bf16"]) == 0
    got, want = read(bf16), read(plain)
    assert got[-1] < got[0] and got != want  # it trains, and bf16 did change the arithmetic
    assert got == pytest.approx(want, rel=0.05)
