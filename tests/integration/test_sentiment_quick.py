"""experiments/sentiment/run.py --tiny: the whole controlled-sentiment story on a tiny random model, in seconds."""
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("sklearn", reason="the sentiment experiment's reward needs scikit-learn (the `test` extra)")

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "experiments" / "sentiment" / "run.py"
DATA = ROOT.parent / "shared" / "data" / "aclImdb"

pytestmark = pytest.mark.slow  # several processes or long runs: not in the fast tier


@pytest.mark.skipif(not (DATA / "train.jsonl.gz").is_file(), reason="needs /work/shared/data/aclImdb")
def test_sentiment_tiny_run_writes_consistent_results(tiny_model_dir, tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    result = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--model", str(tiny_model_dir), "--out", str(out),
                             "--work", str(work)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("frontier.png", "temperatures.md", "summary.json", "reward_model.joblib"):
        assert (out / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    methods = summary["methods"]
    assert set(methods) == {"SFT", "best-of-4", "best-of-16", "Preferred-FT", "DPO β=0.1"}
    temperatures = summary["sizes"]["temperatures"]
    for name, m in methods.items():
        assert math.isfinite(m["kl"]), name
        for t in temperatures:
            assert 0.0 <= m["reward"][str(t)] <= 1.0, (name, t)
    assert methods["SFT"]["kl"] == 0.0  # the reference scored against itself on its own samples
    assert methods["DPO β=0.1"]["kl"] >= -0.5  # an estimate of a KL: near or above 0
    assert methods["best-of-4"]["kl"] == pytest.approx(math.log(4) - 3 / 4)
    for t in map(str, temperatures):  # the same SFT samples: the best of more can only be as good or better
        assert methods["best-of-16"]["reward"][t] >= methods["best-of-4"]["reward"][t] >= methods["SFT"]["reward"][t]
    assert 0.5 < summary["reward_model"]["test_accuracy"] <= 1.0  # 300 reviews already beat chance

    pairs = [json.loads(line) for line in (work / "pairs.jsonl").read_text().splitlines()]
    assert pairs and all(p["score_chosen"] > p["score_rejected"] for p in pairs)
    assert {"prompt", "chosen", "rejected"} <= set(pairs[0])
    table = (out / "temperatures.md").read_text()
    assert "| best-of-16 |" in table and "T=0.25" in table

    # A second run reuses the cached classifier and the finished training runs.
    again = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--model", str(tiny_model_dir), "--out", str(out),
                            "--work", str(work)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert json.loads((out / "summary.json").read_text())["methods"] == methods  # seeded: the same numbers
    assert "reusing" in again.stdout

    (out / "frontier.png").unlink()
    redraw = subprocess.run([sys.executable, str(SCRIPT), "--plot-only", "--out", str(out), "--work", str(work)],
                            capture_output=True, text=True, timeout=120)
    assert redraw.returncode == 0 and (out / "frontier.png").is_file(), redraw.stderr[-3000:]
