"""charts/: one bar chart per task (each system's mean score, std error bars) and paired_differences.png."""

from __future__ import annotations

from pathlib import Path

from mtkd.report.intervals import INTERVAL_SYSTEMS
from mtkd.report.scores import SYSTEM_NAMES, cell_value

CHART_COLORS = {
    "single_task": "#999999",
    "mtdnn": "#4c72b0",
    "ensemble": "#dd8452",
    "mtdnn_kd": "#55a868",
    "mtdnn_kd_unlabeled": "#8172b3",
}
CHART_LABELS = {
    "single_task": "single-task",
    "mtdnn": "MT-DNN",
    "ensemble": "ensemble\n(teachers)",
    "mtdnn_kd": "MT-DNN-KD",
    "mtdnn_kd_unlabeled": "MT-DNN-KD\n+ unlabeled",
}


def _pyplot():
    """matplotlib's pyplot on the file-only backend (imported here: only a report needs it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_charts(results: dict, folder: Path) -> list[Path]:
    """One bar chart per task: each system's score (mean metric), with std error bars; with intervals,
    paired_differences.png (`plot_paired_differences`)."""
    plt = _pyplot()
    folder.mkdir(parents=True, exist_ok=True)
    systems, std = results["systems"], results.get("std", {})
    tasks = {t for s in systems.values() for t in s}
    paths = []
    for t in sorted(tasks):
        names = [s for s in systems if t in systems[s]]
        values = [cell_value(systems[s][t]) for s in names]
        errors = [cell_value(std[s][t]) if s in std and t in std[s] else 0.0 for s in names]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.bar(
            [CHART_LABELS.get(s, s) for s in names],
            values,
            yerr=errors,
            capsize=4,
            color=[CHART_COLORS.get(s, "#8172b3") for s in names],
        )
        metrics = list(systems[names[0]][t])
        ax.set_ylabel(("mean of " if len(metrics) > 1 else "") + "/".join(metrics) + " (dev, x100)")
        ax.set_title(t)
        ax.set_ylim(max(0, min(values) - 5), max(v + e for v, e in zip(values, errors, strict=False)) + 3)
        for x, (v, e) in enumerate(zip(values, errors, strict=False)):  # above the error bar, so the two do not overlap
            ax.text(x, v + e + 0.3, f"{v:.1f}", ha="center", fontsize=8)
        fig.tight_layout()
        path = folder / f"{t}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        paths.append(path)
    paired = plot_paired_differences(results, folder / "paired_differences.png")
    return paths + ([paired] if paired else [])


def plot_paired_differences(results: dict, path: Path) -> Path | None:
    """Per task and on the mean: each seed's difference to MT-DNN (dots) and the mean difference with
    its interval (error bar), one colour per system, a line at 0."""
    intervals = results.get("intervals")
    if not intervals:
        return None
    plt = _pyplot()
    comparisons = intervals["comparisons"]
    systems = [s for s in INTERVAL_SYSTEMS if s in comparisons]
    columns = list(dict.fromkeys(t for s in systems for t in comparisons[s]["tasks"])) + ["mean"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.85 * len(columns) + 2), 3.8))
    width = 0.8 / len(systems)
    for k, s in enumerate(systems):
        offset, color = -0.4 + width * (k + 0.5), CHART_COLORS.get(s, "#8172b3")
        label = SYSTEM_NAMES[s] + (" (mean: teacher tasks)" if s == "ensemble" else "")
        for x, t in enumerate(columns):
            r = comparisons[s]["mean"] if t == "mean" else comparisons[s]["tasks"].get(t)
            if r is None:
                continue
            ax.errorbar(
                [x + offset],
                [r["diff"]],
                yerr=[[r["diff"] - r["low"]], [r["high"] - r["diff"]]],
                fmt="s",
                color=color,
                capsize=3,
                markersize=5,
                label=label,
            )
            label = None  # one legend entry per system
            ax.scatter([x + offset] * len(r["per_seed"]), r["per_seed"], color=color, s=12, alpha=0.5, zorder=3)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(columns)))
    ax.set_xticklabels(columns, rotation=30, ha="right")
    ax.set_ylabel("difference to MT-DNN (dev points)")
    ax.set_title(f"Paired differences to MT-DNN: seeds (dots), mean with {intervals['level']:.0%} interval", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
