"""Results on disk: the temperature table (temperatures.md) and the reward-vs-KL frontier (frontier.png)."""
from __future__ import annotations

import json
from pathlib import Path


def write_temperature_table(results: dict, temperatures, path: Path) -> None:
    lines = ["| method | " + " | ".join(f"T={t}" for t in temperatures) + " | KL to SFT (T=1) |",
             "|---|" + "---|" * (len(temperatures) + 1)]
    for name, r in results.items():
        kl = f"{r['kl']:.2f}" + (" (bound)" if r["kl_kind"] != "measured" else "")
        se = r.get("reward_se", {})
        cells = [f"{r['reward'][t]:.3f}" + (f" ± {se[t]:.3f}" if t in se else "") for t in temperatures]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {kl} |")
    path.write_text("Mean true reward (P(positive) of prefix + completion) on held-out test prefixes "
                    "(± one standard error over prompts, where recorded).\n\n"
                    + "\n".join(lines) + "\n", encoding="utf-8")


def plot_frontier(results: dict, checkpoints: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    dpo_names = [n for n in results if n.startswith("DPO")]
    best_names = [n for n in results if n.startswith("best-of")]
    looks = {"SFT": ("black", "o"), "Preferred-FT": ("tab:green", "s")}
    looks.update({n: (plt.cm.Oranges(0.5 + 0.4 * i / max(1, len(best_names) - 1)), "^") for i, n in enumerate(best_names)})
    looks.update({n: (plt.cm.Blues(0.45 + 0.5 * i / max(1, len(dpo_names) - 1)), "D") for i, n in enumerate(dpo_names)})
    start = (0.0, results["SFT"]["reward"][1.0])  # step 0 of every run is the SFT model
    for name, points in checkpoints.items():  # earlier checkpoints of a run: small markers on a line to its end
        line = [start] + [(c["kl"], c["reward"]) for c in points] + [(results[name]["kl"], results[name]["reward"][1.0])]
        ax.plot(*zip(*line), color=looks[name][0], alpha=0.6, marker=".", linestyle=":")
    for name, r in results.items():
        color, marker = looks.get(name, ("gray", "x"))
        ax.scatter(r["kl"], r["reward"][1.0], color=color, marker=marker, s=55, zorder=3, label=name,
                   edgecolors="black", linewidths=0.4)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_xlabel("KL(π ‖ π_SFT), nats per sequence (best-of-N: analytic bound)")
    ax.set_ylabel("mean true reward, P(positive), T = 1")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(out: Path, results: dict, checkpoints: dict, temperatures, title: str) -> None:
    write_temperature_table(results, temperatures, out / "temperatures.md")
    plot_frontier(results, checkpoints, out / "frontier.png", title)


def redraw(out: Path) -> int:
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    results = {name: {**m, **{key: {float(t): v for t, v in m[key].items()} for key in ("reward", "reward_se")
                              if key in m}} for name, m in summary["methods"].items()}
    write_results(out, results, summary["dpo_checkpoints_T1"], summary["sizes"]["temperatures"], summary["title"])
    print(f"[sentiment] redrew {out / 'frontier.png'} and {out / 'temperatures.md'}")
    return 0


