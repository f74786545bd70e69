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

REWARD_MODEL_PANELS = (  # `dpokit reward`: the rewards are the model's scores
    ("loss", "Bradley–Terry loss −log σ(r_chosen − r_rejected)"),
    ("rewards/accuracies", "pair accuracy (r_chosen > r_rejected)"),
    ("rewards/margins", "reward margin r_chosen − r_rejected"),
    ("rewards/chosen", "reward of chosen  [dashed: rejected]"),
)
DASHED = {"logps/chosen": "logps/rejected", "rewards/chosen": "rewards/rejected"}  # drawn beside their partner

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


def choose_panels(records: list[dict]) -> tuple:
    """Preference runs have reward accuracies; of those, a reward model's have no log-probs (DPO's always do)."""
    if not any("rewards/accuracies" in r for r in records):
        return SFT_PANELS
    return PANELS if any("logps/chosen" in r for r in records) else REWARD_MODEL_PANELS


def plot_run(run_dir: Path) -> Path:
    """Write RUN/report.png: train (thin) and held-out (dots) curves over steps."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    records = read_metrics(run_dir)
    panels = choose_panels(records)
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), constrained_layout=True)
    for ax, (key, title) in zip(axes.flat, panels):
        for prefix, style, label in (("", "-", "train"), ("eval/", "o-", "held-out")):
            rows = [r for r in records if prefix + key in r]
            if rows and prefix and all(prefix + key + "_ci" in r for r in rows):
                # held-out evaluations are separate measurements: points with their 95% intervals, not a line
                values = [r[prefix + key] for r in rows]
                # a percentile bootstrap need not contain its own mean: draw no bar below the point then
                spread = [[max(0.0, v - r[prefix + key + "_ci"][0]) for v, r in zip(values, rows)],
                          [max(0.0, r[prefix + key + "_ci"][1] - v) for v, r in zip(values, rows)]]
                ax.errorbar([r["step"] for r in rows], values, yerr=spread, fmt="o", ms=4, capsize=3,
                            label=f"{label} (95% interval)")
            elif rows:
                ax.plot([r["step"] for r in rows], [r[prefix + key] for r in rows], style, label=label,
                        lw=1 if not prefix else 1.5, ms=4)
            if key in DASHED:
                rows = [r for r in records if prefix + DASHED[key] in r]
                if rows:
                    ax.plot([r["step"] for r in rows], [r[prefix + DASHED[key]] for r in rows],
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


def _summary_rows(summary: dict) -> list[tuple[str, str]]:
    """The figures people look for first, in a fixed order; absent ones are skipped."""
    rows = []
    start, end = summary.get("eval_start") or {}, summary.get("eval_end") or {}
    for key, label in (("eval/loss", "held-out loss"), ("eval/rewards/accuracies", "held-out reward accuracy"),
                       ("eval/rewards/margins", "held-out reward margin"), ("eval/logps/chosen", "held-out log π(chosen)")):
        if key in end:
            interval = end.get(key + "_ci")
            shown = f" (95% interval {interval[0]:.4f} – {interval[1]:.4f}, {end['eval/pairs']} pairs)" if interval else ""
            rows.append((label, f"{start.get(key, float('nan')):.4f} → {end[key]:.4f}{shown}"))
    if summary.get("verdict"):
        rows.append(("verdict", summary["verdict"]))
    for key, label in (("steps", "steps"), ("train_tokens", "training tokens"), ("tokens_per_s", "tokens/s"),
                       ("peak_rss_mb", "peak RSS (MB)"), ("wall_seconds", "wall time (s)"), ("best_step", "best step"),
                       ("output", "model")):
        if summary.get(key) is not None:
            value = summary[key]
            rows.append((label, f"{value:,.0f}" if isinstance(value, float) else str(value)))
    return rows


def write_html(run_dir: Path) -> Path:
    """RUN/report.html: one self-contained page (plots embedded) with the run's summary, warnings and config."""
    import base64
    import html

    if (run_dir / "rounds.jsonl").is_file():  # a dpokit iterate run: its rounds
        return write_rounds_html(run_dir)

    png = plot_run(run_dir)
    summary_path, config_path = run_dir / "summary.json", run_dir / "config.yaml"
    summary = json.loads(summary_path.read_text(encoding="utf-8")) if summary_path.is_file() else {}
    config = config_path.read_text(encoding="utf-8") if config_path.is_file() else "(no config.yaml)"
    image = base64.b64encode(png.read_bytes()).decode()
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in _summary_rows(summary))
    warnings = "".join(f"<li>{html.escape(w)}</li>" for w in summary.get("warnings", []))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dpokit run: {html.escape(str(run_dir))}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1150px}} th{{text-align:left;padding-right:2em}}
.warn{{background:#fff3cd;padding:.5em 1em;border-left:4px solid #e0a800}} pre{{background:#f6f6f6;padding:1em}}</style>
</head><body>
<h1>dpokit run: {html.escape(str(run_dir))}</h1>
<table id="summary">{rows or "<tr><td>no summary.json yet (the run has not finished)</td></tr>"}</table>
{f'<div class="warn" id="warnings"><b>Warnings</b><ul>{warnings}</ul></div>' if warnings else ''}
<h2>Metrics over steps (train: lines, held-out: dots)</h2>
<img id="plots" alt="loss, reward accuracy, margins and log-probs over steps" width="1100"
     src="data:image/png;base64,{image}">
<h2>Config</h2>
<pre id="config">{html.escape(config)}</pre>
<script>
window.addEventListener("load", () => {{
  const shown = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
  document.body.dataset.imagesLoaded = String(shown);
}});
</script>
</body></html>
"""
    out = run_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    return out


# ---- dpokit iterate: one point per round ----------------------------------------------------------------------------

ROUND_PANELS = (("reward", "held-out judge reward"), ("win_rate/start", "win rate vs the starting model"),
                ("kl", "KL to the reference (nats)"), ("length", "mean length (tokens)"))


def plot_rounds(run_dir: Path, history: list[dict]) -> Path:
    """RUN/report.png of an iterate run: held-out reward, win rate against the start, KL and length per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axis = "step" if all("step" in h for h in history) else "round"  # iterate --online evaluates every N steps
    rounds = [h[axis] for h in history]
    fig, axes = plt.subplots(2, 2, figsize=(10, 7), constrained_layout=True)
    for ax, (key, label) in zip(axes.flat, ROUND_PANELS):
        points = [(h[axis], h[key]) for h in history if key in h]
        if key == "win_rate/start":
            ax.axhline(0.5, color="grey", lw=0.8, ls="--")
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
        ax.set_title(label)
        ax.set_xlabel(axis)
        ax.set_xticks(rounds)
    path = run_dir / "report.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_rounds_html(run_dir: Path) -> Path:
    """RUN/report.html of an iterate run: the rounds plot, a table of every round, warnings and the config."""
    import base64
    import html

    history = [json.loads(x) for x in (run_dir / "rounds.jsonl").read_text(encoding="utf-8").split("\n") if x.strip()]
    image = base64.b64encode(plot_rounds(run_dir, history).read_bytes()).decode()
    config_path = run_dir / "config.yaml"
    config = config_path.read_text(encoding="utf-8") if config_path.is_file() else "(no config.yaml)"
    columns = ("round", "pairs", "dropped", "reward", "win_rate/start", "win_rate/last", "kl", "length", "seconds")
    if all("step" in h for h in history):  # iterate --online: an evaluation every N steps, with the samples' reward
        columns = ("step", "pairs", "draws", "sample_reward", "reward", "win_rate/start", "win_rate/last", "kl",
                   "length", "seconds")

    def cell(value) -> str:
        text = f"{value:.4f}" if isinstance(value, float) else json.dumps(value) if isinstance(value, dict) else value
        return f"<td>{html.escape(str(text if value is not None else '–'))}</td>"

    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
    rows = "".join("<tr>" + "".join(cell(h.get(c)) for c in columns) + "</tr>" for h in history)
    warnings = "".join(f"<li>{html.escape(h['warning'])}</li>" for h in history if h.get("warning"))
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>dpokit iterate: {html.escape(str(run_dir))}</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1150px}} th,td{{text-align:left;padding-right:1.5em}}
.warn{{background:#fff3cd;padding:.5em 1em;border-left:4px solid #e0a800}} pre{{background:#f6f6f6;padding:1em}}</style>
</head><body>
<h1>dpokit iterate: {html.escape(str(run_dir))}</h1>
<table id="rounds"><tr>{head}</tr>{rows}</table>
{f'<div class="warn" id="warnings"><b>Warnings</b><ul>{warnings}</ul></div>' if warnings else ''}
<h2>Rounds (round 0: the starting model)</h2>
<img id="plots" alt="held-out reward, win rate, KL and length per round" width="1000" src="data:image/png;base64,{image}">
<h2>Config</h2>
<pre id="config">{html.escape(config)}</pre>
</body></html>
"""
    out = run_dir / "report.html"
    out.write_text(page, encoding="utf-8")
    return out
