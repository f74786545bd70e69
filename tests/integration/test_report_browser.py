"""The run report: a real run with --early-stop writes report.html, and headless Chromium renders it with the plots."""
import json
import shutil
import subprocess

import numpy as np
import pytest
import yaml
from PIL import Image
from safetensors.torch import load_file

from test_cli_dpo import dpokit, pairs_file, read_metrics  # noqa: F401  (pairs_file is a fixture)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = pytest.mark.slow  # several processes or long runs: not in the fast tier


@pytest.fixture(scope="module")
def early_run(tiny_model_dir, pairs_file, tmp_path_factory):  # noqa: F811
    """Learning rate far too high: held-out loss gets worse after the first steps, so early stop triggers."""
    run = tmp_path_factory.mktemp("report") / "run"
    result = dpokit("dpo", "--model", tiny_model_dir, "--data", pairs_file, "--output", run, "--max-steps", 40,
                    "--batch-size", 4, "--learning-rate", 3e-2, "--eval-every", 2, "--patience", 2, "--early-stop",
                    "--eval-fraction", 0.25, "--max-length", 160, "--max-prompt-length", 80)
    assert result.returncode == 0, result.stderr[-2000:]
    return run, result


def test_early_stop_keeps_the_best_model_as_final(early_run):
    run, result = early_run
    summary = json.loads((run / "summary.json").read_text())
    evals = [r for r in read_metrics(run) if "eval/loss" in r]
    best = min(evals, key=lambda r: r["eval/loss"])
    assert summary["stopped_early_at"] and summary["stopped_early_at"] < 40
    assert summary["best_step"] == best["step"] and summary["final_is"] == "best"
    assert evals[-1]["step"] - best["step"] == 2 * 2  # stopped after `patience` evaluations without improvement
    final, kept = load_file(run / "final" / "model.safetensors"), load_file(run / "best" / "model.safetensors")
    assert all((final[k] == kept[k]).all() for k in final)
    assert "early stop at step" in result.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (.ci/run installs it with apt-get)")
def test_report_html_renders_in_chromium_with_its_plots(early_run, tmp_path):
    run, _ = early_run
    page = run / "report.html"
    assert page.is_file()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=3000"]
    dom = subprocess.run([CHROMIUM, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    assert 'data-images-loaded="1"' in dom.stdout  # the browser decoded the embedded plot
    assert "held-out reward accuracy" in dom.stdout and "learning_rate" in dom.stdout
    assert "95% interval" in dom.stdout and "Held-out preference" in dom.stdout  # intervals and the verdict
    shot = tmp_path / "shot.png"
    subprocess.run([CHROMIUM, *flags, "--window-size=1200,1400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(shot).convert("L"))
    assert (pixels < 128).mean() > 0.005  # text and plot lines drawn, not a blank page
    assert yaml.safe_load((run / "config.yaml").read_text())["early_stop"] is True
