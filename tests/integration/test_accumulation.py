"""Splitting a step into micro-batches changes nothing: DPO and SFT (padded and packed) give the weights of the
unsplit step. For SFT that needs the step-wide token mean (objectives.SFTObjective.begin_step): averaging the
micro-batches' own token means, as before, weights a short micro-batch's tokens more."""
import json

import pytest
from safetensors.torch import load_file

from dpokit.cli import main
from dpokit.config import SFTConfig
from dpokit.train import objectives
from dpokit.train.sft import run_sft

pytestmark = pytest.mark.slow  # several processes or long runs: not in the fast tier


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    # answers of very different lengths, so micro-batches hold very different numbers of trained tokens
    rows = [{"prompt": f"Question {i}: is it safe?", "chosen": " Yes" + ", and it is fine" * (i % 5),
             "rejected": f" Never {i}!" * (1 + i % 3)} for i in range(16)]
    path = tmp_path_factory.mktemp("accum") / "d.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def train(command, model, data, out, *flags):
    args = [command, "--model", str(model), "--data", str(data), "--output", str(out), "--max-steps", "3",
            "--batch-size", "4", "--learning-rate", "1e-3", "--eval-fraction", "0", *map(str, flags)]
    assert main(args) == 0
    return load_file(out / "final" / "model.safetensors")


def max_diff(a, b):
    return max(float((a[k] - b[k]).abs().max()) for k in a)


@pytest.mark.parametrize("command,flags", [("dpo", []), ("sft", []), ("sft", ["--packing"])],
                         ids=["dpo", "sft", "sft-packed"])
def test_four_micro_batches_equal_one_batch(tiny_model_dir, data, tmp_path, command, flags):
    whole = train(command, tiny_model_dir, data, tmp_path / "whole", *flags)
    split = train(command, tiny_model_dir, data, tmp_path / "split", "--grad-accum", 4, *flags)
    start = load_file(tiny_model_dir / "model.safetensors")
    assert max_diff(whole, start) > 1e-3  # it trained
    assert max_diff(whole, split) <= 1e-5


class MicroBatchTokenMean(objectives.SFTObjective):
    """The old SFT objective: each micro-batch's own token mean (begin_step does not set the step-wide count)."""

    def begin_step(self, examples, shares):
        pass


def test_sft_micro_batch_token_means_would_differ(tiny_model_dir, data, tmp_path):
    """The check above can fail: with the old per-micro-batch token mean the weights move measurably. The old
    objective is handed to the one loop through run_sft's objective seam."""
    def run(out, grad_accum):
        config = SFTConfig(model=str(tiny_model_dir), data=str(data), output=str(out), max_steps=3, batch_size=4,
                           learning_rate=1e-3, eval_fraction=0, grad_accum=grad_accum)
        run_sft(config, quiet=True, objective=MicroBatchTokenMean(config))
        return load_file(out / "final" / "model.safetensors")

    assert max_diff(run(tmp_path / "whole", 1), run(tmp_path / "split", 4)) > 1e-4
