"""Plots of a run's metrics.jsonl: the curves people look at to tell whether DPO learned or overfit."""
from __future__ import annotations

import json
from pathlib import Path

from .errors import UserError

PANELS = (
    ("loss", "DPO loss"),
    ("rewards/accuracies", "reward accuracy"),
    ("rewards/margins", "reward margin (β·h)"),
    ("logps/chosen", "log π(chosen)  [dashed: rejected]"),
)

SFT_PANELS = (
    ("loss", "SFT loss (NLL per answer token)"),
    ("grad_norm", "gradient norm"),
    ("lr", "learning rate"),
    ("tokens_per_s", "tokens/s"),
)


def read_metrics(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        raise UserError(f"{run_dir} has no metrics.jsonl; is it a dpokit run folder?")
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def plot_run(run_dir: Path) -> Path:
    """Write RUN/report.png: train (thin) and held-out (dots) curves over steps."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    panels = PANELS if any("rewards/accuracies" in r for r in records) else SFT_PANELS
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for ax, (key, title) in zip(axes.flat, panels):
        for prefix, style, label in (("", "-", "train"), ("eval/", "o-", "held-out")):
            rows = [r for r in records if prefix + key in r]
            if rows:
                ax.plot([r["step"] for r in rows], [r[prefix + key] for r in rows], style, label=label,
                        lw=1 if not prefix else 1.5, ms=4)
            if key == "logps/chosen":
                rows = [r for r in records if prefix + "logps/rejected" in r]
                if rows:
                    ax.plot([r["step"] for r in rows], [r[prefix + "logps/rejected"] for r in rows],
                            style.replace("-", "--"), lw=1, ms=3, label=f"{label} rejected")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(f"dpokit run: {run_dir}")
    out = run_dir / "report.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
