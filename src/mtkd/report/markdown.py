"""results.md: Table 3 (systems x dev reports), the paper's questions, the paired intervals and the targets."""

from __future__ import annotations

import numpy as np

from mtkd.metrics import task_scores
from mtkd.report.intervals import INTERVAL_SYSTEMS
from mtkd.report.scores import (
    KD_SYSTEMS,
    MIN_GAIN_FOR_SHARE,
    SHARE_DEFINITION,
    SYSTEM_NAMES,
    beside_names,
    cell_value,
    layout_or_glue,
)


def results_markdown(results: dict) -> str:
    """Rows = systems, columns = dev reports + mean over tasks; the best single-model number per
    column in bold (the ensemble is not a single model). With several seeds cells read mean ± std.
    An extra evaluation split of a task is a column beside it, left out of the mean."""
    lines = _table_lines(results)
    if results.get("comparison"):
        lines += _comparison_lines(results["comparison"])
    lines += _interval_lines(results)
    lines += _target_lines(results.get("targets") or [])
    if results.get("notes"):
        lines += ["", "Data notes:"] + [f"- {t}: {n}" for t, n in results["notes"].items()]
    return "\n".join(lines) + "\n"


def _table_lines(results: dict) -> list[str]:
    """The table, and the line under it saying how to read it."""
    systems, std = results["systems"], results.get("std", {})
    layout = layout_or_glue(results.get("report_layout"))
    beside = beside_names(layout)
    # columns in the first system's order; a report only later systems have goes last
    tasks = sorted(
        {t for s in systems.values() for t in s},
        key=lambda t: list(next(iter(systems.values()))).index(t) if t in next(iter(systems.values())) else 99,
    )
    single = [s for s in systems if s != "ensemble"]
    best = {t: max((cell_value(systems[s][t]) for s in single if t in systems[s]), default=None) for t in tasks}
    means = {s: float(np.mean(list(task_scores(systems[s], layout=layout).values()))) for s in systems}
    best_mean = max((means[s] for s in single), default=None)
    multi = len(results.get("seeds", [])) > 1

    def header(t):
        metrics = "/".join(next(systems[s][t] for s in systems if t in systems[s]))
        return f"{t} ({metrics}; extra split of {beside[t]})" if t in beside else f"{t} ({metrics})"

    lines = ["| system | " + " | ".join(header(t) for t in tasks) + " | mean |", "|---" * (len(tasks) + 2) + "|"]
    for s in systems:
        cells = []
        for t in tasks:
            if t not in systems[s]:
                cells.append("–")
                continue
            text = "/".join(f"{v:.1f}" + (f" ± {std[s][t][m]:.1f}" if multi else "") for m, v in systems[s][t].items())
            cells.append(f"**{text}**" if s != "ensemble" and abs(cell_value(systems[s][t]) - best[t]) < 1e-9 else text)
        mean = f"{means[s]:.1f}"
        if s != "ensemble" and best_mean is not None and abs(means[s] - best_mean) < 1e-9:
            mean = f"**{mean}**"
        lines.append(f"| {SYSTEM_NAMES.get(s, s)} | " + " | ".join(cells) + f" | {mean} |")
    lines.append("")
    extras = [t for t in tasks if t in beside]
    lines.append(
        f"Dev results x100, seeds {results.get('seeds')}; bold: best single model per column "
        "(the ensemble row covers the teacher tasks only; its mean is over those). Mean = mean over tasks of "
        "each task's score (its metrics' mean; a task with several dev splits counts once, as their mean)."
        + (
            f" Extra evaluation splits ({', '.join(extras)}) are shown beside their task and left out of the "
            "means and the task counts."
            if extras
            else ""
        )
    )
    return lines


def _share_text(share: float | None) -> str:
    """A share as printed: '—' where none is computed, capped at 'over 100%' (the student gained more
    than the ensemble) and 'under -100%' (it lost more than the ensemble gained)."""
    if share is None:
        return "—"
    if share > 1:
        return "over 100%"
    if share < -1:
        return "under -100%"
    return f"{share:.0%}"


def _comparison_lines(comparison: dict) -> list[str]:
    lines = ["", "The paper's Table 3 questions (differences in points, each task's mean metric):"]
    for system, prefix in KD_SYSTEMS.items():
        if f"{prefix}_beats_mtdnn" not in comparison:
            continue
        wins = comparison[f"{prefix}_beats_mtdnn"]
        per_task, extra_splits = (
            comparison[f"{prefix}_minus_mtdnn"],
            comparison.get(f"{prefix}_minus_mtdnn_extra_splits"),
        )
        lines.append(
            f"- {SYSTEM_NAMES[system]} better than MT-DNN on {len(wins['tasks'])} of {wins['of']} tasks "
            f"(mean {wins['mean_diff']:+.2f}); on tasks without a teacher {len(wins['tasks_without_teacher'])} "
            f"of {wins['of_without_teacher']}"
            + (
                f" (mean {wins['mean_diff_without_teacher']:+.2f})"
                if wins["mean_diff_without_teacher"] is not None
                else ""
            )
            + "."
        )
        lines.append(
            "  per task: "
            + ", ".join(f"{t} {v:+.1f}" for t, v in per_task.items())
            + (
                "; extra evaluation splits (not counted): "
                + ", ".join(f"{t} {v:+.1f}" for t, v in extra_splits.items())
                if extra_splits
                else ""
            )
        )
    if "ensemble_minus_mtdnn" in comparison:
        ensemble_gain, kept = comparison["ensemble_minus_mtdnn"], comparison["ensemble_gain_kept"]
        lines.append(
            "- Ensemble minus MT-DNN on the teacher tasks: "
            + ", ".join(f"{t} {v:+.1f}" for t, v in ensemble_gain.items())
            + "; share of that gain the student keeps: "
            + ", ".join(f"{t} {_share_text(kept.get(t))}" for t in ensemble_gain)
            + "."
        )
        if "kd_unlabeled_ensemble_gain_kept" in comparison:
            kept_unlabeled = comparison["kd_unlabeled_ensemble_gain_kept"]
            lines.append(
                "  MT-DNN-KD + unlabeled text keeps: "
                + ", ".join(f"{t} {_share_text(kept_unlabeled.get(t))}" for t in ensemble_gain)
                + "."
            )
        lines.append(
            f"  ({SHARE_DEFINITION}; — : ensemble gain < {MIN_GAIN_FOR_SHARE}: share not meaningful; "
            "over 100%: the student gained more than the ensemble.)"
        )
    if "mtdnn_beats_single_task" in comparison:
        wins = comparison["mtdnn_beats_single_task"]
        lines.append(
            f"- MT-DNN better than single-task fine-tuning on {len(wins['tasks'])} of {wins['of']} tasks "
            f"(mean {wins['mean_diff']:+.2f}): "
            + ", ".join(f"{t} {v:+.1f}" for t, v in comparison["mtdnn_minus_single_task"].items())
            + "."
        )
    return lines


def _interval_text(r: dict) -> str:
    return f"{r['diff']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]"


def _interval_lines(results: dict) -> list[str]:
    intervals = results.get("intervals")
    lines = []
    if intervals:
        comparisons = intervals["comparisons"]
        systems = [s for s in INTERVAL_SYSTEMS if s in comparisons]
        tasks = list(dict.fromkeys(t for s in systems for t in comparisons[s]["tasks"]))
        lines += [
            "",
            f"Paired differences against MT-DNN, in points, with {intervals['level']:.0%} intervals "
            f"(seeds {intervals['seeds']}):",
            "",
            "| task | " + " | ".join(f"{SYSTEM_NAMES[s]} − MT-DNN" for s in systems) + " |",
            "|---" * (len(systems) + 1) + "|",
        ]
        for t in tasks:
            lines.append(
                f"| {t} | "
                + " | ".join(
                    _interval_text(comparisons[s]["tasks"][t]) if t in comparisons[s]["tasks"] else "–" for s in systems
                )
                + " |"
            )
        lines.append(
            "| mean | "
            + " | ".join(
                _interval_text(comparisons[s]["mean"]) + (" (teacher tasks)" if s == "ensemble" else "")
                for s in systems
            )
            + " |"
        )
        lines.append("")
        for s in systems:
            c = comparisons[s]
            n = len(c["tasks"])
            over = f"{n} {'teacher ' if s == 'ensemble' else ''}task{'s' if n != 1 else ''}"
            lines.append(
                f"- {SYSTEM_NAMES[s]} − MT-DNN on the mean over {over}: {_interval_text(c['mean'])}: the interval "
                + ("is above 0." if c["mean_above_zero"] else "is not above 0.")
                + (
                    f" Tasks whose interval is above 0: {', '.join(c['tasks_above_zero'])}."
                    if c["tasks_above_zero"]
                    else " No task's interval is above 0."
                )
            )
        lines.append(f"  Method: {intervals['method']}.")
    if results.get("intervals_note"):
        lines += ["", f"Intervals not computed: {results['intervals_note']}."]
    return lines


def _target_lines(targets: list[dict]) -> list[str]:
    if not targets:
        return []
    lines = ["", "Targets of the decisive KD experiment:"]
    for target in targets:
        v = target["value"]
        if "per_seed" in v:
            got = ", ".join(f"seed {s} {g:+.2f}" for s, g in v["per_seed"].items()) or "no seed"
        elif "tasks_better" in v:
            got = f"{v['tasks_better']} of {v['of']} tasks, mean {v['mean_diff']:+.2f}" + (
                f" [{v['mean_interval'][0]:+.2f}, {v['mean_interval'][1]:+.2f}]"
                if v["mean_interval"]
                else " (no interval)"
            )
        else:
            got = (
                f"{v['kept']:.0%} ({v['student_gain']:+.2f} of {v['ensemble_gain']:+.2f})"
                if v["kept"] is not None
                else f"no gain to keep (ensemble {v['ensemble_gain']:+.2f})"
            )
        mark = {True: "met", False: "not met", None: "not measured"}[target["met"]]
        lines.append(f"- {target['target']}: {got}: **{mark}**.")
    return lines
