"""`dpokit sft`, `dpokit coh` and LoRA DPO end to end on a tiny model: real CLI, real files."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from dpokit.config import DPOConfig
from dpokit.data.collate import collate_shared
from dpokit.data.tokenize import tokenize_pair
from dpokit.logprobs import batch_logps
from dpokit.models import load_model, load_policy, load_tokenizer
from dpokit.reference import AdaptersOffReference
from dpokit.types import PreferencePair
from test_cli_dpo import dpokit, hh_rows, pairs_file, read_metrics  # noqa: F401  (pairs_file is a fixture)
from tiny import SHARED_DATA

ALPACA = SHARED_DATA / "llamafactory-demo" / "alpaca_en_demo.json.gz"

pytestmark = pytest.mark.slow  # several processes or long runs: not in the fast tier


@pytest.mark.skipif(not ALPACA.is_file(), reason="shared data not present")
def test_sft_on_alpaca_demo_loss_falls(tiny_model_dir, tmp_path):
    run = tmp_path / "sft"
    result = dpokit("sft", "--model", tiny_model_dir, "--data", ALPACA, "--output", run, "--max-steps", 16,
                    "--batch-size", 8, "--learning-rate", 1e-3, "--max-length", 128, "--eval-every", 8,
                    "--max-eval-pairs", 32, "--packing")
    assert result.returncode == 0, result.stderr[-2000:]
    evals = [m["eval/loss"] for m in read_metrics(run) if "eval/loss" in m]
    assert len(evals) == 3 and evals[-1] < evals[0] - 0.4, evals
    assert "held-out loss" in result.stdout
    assert (run / "final" / "model.safetensors").is_file() and (run / "report.png").stat().st_size > 10_000


def test_coh_run_records_its_phrases(tiny_model_dir, pairs_file, tmp_path):  # noqa: F811
    run = tmp_path / "coh"
    result = dpokit("coh", "--model", tiny_model_dir, "--data", pairs_file, "--output", run, "--max-steps", 2,
                    "--batch-size", 4, "--max-length", 256, "--positive", "Good answer:", "--negative", "Bad answer:")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads((run / "final" / "dpokit_coh.json").read_text()) == {"positive": "Good answer:",
                                                                           "negative": "Bad answer:"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["examples"]["train"] + summary["examples"]["eval"] == 2 * 32  # both orders of every pair


def _tiny_pairs(tok, n=4):
    rows = hh_rows(n)
    pairs = [PreferencePair(r["chosen"][:r["chosen"].rfind("Assistant:") + 10], r["chosen"][r["chosen"].rfind("Assistant:") + 10:],
                            r["rejected"][r["rejected"].rfind("Assistant:") + 10:], f"p:{i}") for i, r in enumerate(rows)]
    from collections import Counter

    return [tokenize_pair(tok, p, max_length=160, max_prompt_length=80, counts=Counter(), chat=True) for p in pairs]


def test_lora_trains_only_adapters_and_its_reference_is_the_base(tiny_model_dir):
    config = DPOConfig(model=str(tiny_model_dir), lora_r=4, lora_alpha=8)
    policy = load_policy(Path(tiny_model_dir), config, "float32")
    base = load_model(Path(tiny_model_dir), train=False)
    tok = load_tokenizer(Path(tiny_model_dir))
    batch = collate_shared(_tiny_pairs(tok), tok.pad_token_id)
    with torch.no_grad():  # move the adapters away from zero so that "adapters off" is a real difference
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    lp = batch_logps(policy, batch)
    (lp.chosen.sum() - lp.rejected.sum()).backward()
    trained = {n for n, p in policy.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert trained and all("lora_" in n for n in trained)
    assert all(not p.requires_grad for n, p in policy.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        ref = AdaptersOffReference(policy).logps(batch, "train", [0, 1, 2, 3])
        want = batch_logps(base, batch)
        on = batch_logps(policy, batch)
    torch.testing.assert_close(ref.chosen, want.chosen, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(ref.rejected, want.rejected, rtol=1e-6, atol=1e-6)
    assert (on.chosen - want.chosen).abs().max() > 1e-3  # the adapters do change the policy


def test_lora_dpo_cli_saves_an_adapter_and_resumes_bit_identically(tiny_model_dir, pairs_file, tmp_path):  # noqa: F811
    args = ["--model", tiny_model_dir, "--data", pairs_file, "--max-steps", 4, "--batch-size", 4,
            "--learning-rate", 1e-3, "--max-length", 192, "--max-prompt-length", 96, "--lora-r", 4,
            "--lora-alpha", 8, "--save-every", 2, "--keep-checkpoints", 3]
    whole, part = tmp_path / "whole", tmp_path / "part"
    result = dpokit("dpo", *args, "--output", whole)
    assert result.returncode == 0, result.stderr[-2000:]
    final = whole / "final"
    config = json.loads((final / "adapter_config.json").read_text())
    assert Path(config["base_model_name_or_path"]) == Path(tiny_model_dir).resolve()
    assert not (final / "model.safetensors").exists()  # adapter only: no copy of the base weights
    evals = [m for m in read_metrics(whole) if "eval/loss" in m]
    assert evals[0]["eval/rewards/margins"] == 0.0  # step 0: policy = adapters-off base = reference

    # a run stopped after checkpoint 2 and resumed ends where the uninterrupted run ended
    result = dpokit("dpo", *args, "--output", part)
    assert result.returncode == 0
    import shutil

    for name in ("final", "checkpoint-4"):
        shutil.rmtree(part / name, ignore_errors=True)
    result = dpokit("dpo", *args, "--output", part, "--resume")
    assert result.returncode == 0, result.stderr[-2000:]
    a = load_file(str(whole / "final" / "adapter_model.safetensors"))
    b = load_file(str(part / "final" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    start = load_file(str(whole / "checkpoint-2" / "adapter_model.safetensors"))
    assert any(not torch.equal(a[k], start[k]) for k in a)  # steps 3–4 did change the adapter


def test_qlora_without_gpu_is_a_clear_error(tiny_model_dir, pairs_file, tmp_path):  # noqa: F811
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    result = dpokit("dpo", "--model", tiny_model_dir, "--data", pairs_file, "--output", tmp_path / "q",
                    "--lora-r", 4, "--load-in-4bit", "--max-steps", 1)
    assert result.returncode == 2
    assert "needs a CUDA GPU" in result.stderr and "Traceback" not in result.stderr


def test_dpo_from_an_sft_adapter_uses_it_as_reference(tiny_model_dir, pairs_file, tmp_path):  # noqa: F811
    sft = tmp_path / "sft"
    result = dpokit("sft", "--model", tiny_model_dir, "--data", pairs_file, "--output", sft, "--max-steps", 3,
                    "--batch-size", 4, "--learning-rate", 1e-2, "--max-length", 192, "--lora-r", 4, "--lora-alpha", 8)
    assert result.returncode == 0, result.stderr[-2000:]
    dpo = tmp_path / "dpo"
    result = dpokit("dpo", "--model", sft / "final", "--data", pairs_file, "--output", dpo, "--max-steps", 1,
                    "--batch-size", 4, "--max-length", 192, "--max-prompt-length", 96, "--lora-r", 4)
    assert result.returncode == 0, result.stderr[-2000:]
    step0 = read_metrics(dpo)[0]
    assert step0["step"] == 0 and step0["eval/rewards/margins"] == 0.0  # the policy starts equal to its reference
    # and the reference is the SFT model, not the base: its chosen log-probs differ from the base's
    tok = load_tokenizer(Path(tiny_model_dir))
    batch = collate_shared(_tiny_pairs(tok), tok.pad_token_id)
    with torch.no_grad():
        base = batch_logps(load_model(Path(tiny_model_dir), train=False), batch)
        tuned = batch_logps(load_model(sft / "final", train=False), batch)
    assert (base.chosen - tuned.chosen).abs().max() > 1e-2
    result = dpokit("dpo", "--model", sft / "final", "--data", pairs_file, "--output", tmp_path / "off",
                    "--max-steps", 1, "--lora-r", 4, "--reference-cache", "off")
    assert result.returncode == 2 and "reference" in result.stderr
