"""Table 3's numbers: each system's mean ± std over seeds, the paper's comparisons, the decisive experiment's targets.

Every number is a dev score x100 (points). A task's score is the mean of its metrics, and a task
with several dev splits (MNLI-m/mm) counts once, as their mean (`metrics.task_scores`).
"""

from __future__ import annotations

import math

import numpy as np

from mtkd.metrics import report_layout, task_scores
from mtkd.tasks import glue_tasks

SYSTEMS = ("single_task", "mtdnn", "ensemble", "mtdnn_kd", "mtdnn_kd_unlabeled")
SYSTEM_NAMES = {
    "single_task": "Single-task fine-tuning",
    "mtdnn": "MT-DNN",
    "ensemble": "MT-DNN ensemble (teachers)",
    "mtdnn_kd": "MT-DNN-KD",
    "mtdnn_kd_unlabeled": "MT-DNN-KD + unlabeled text",
}
KD_SYSTEMS = {"mtdnn_kd": "kd", "mtdnn_kd_unlabeled": "kd_unlabeled"}  # system -> its keys' prefix in "comparison"
BASELINE = "mtdnn"  # what the students and the ensemble are measured against


# ---------------------------------------------------------------------------- mean ± std over seeds
def aggregate(per_seed: dict[str, list[dict]], seeds: list[int]) -> dict:
    """{"systems": {system: {task: {metric: mean}}}, "std": same shape, "seeds": [...]} (x100); a
    nested entry (the labelled test results under "test") is averaged the same way."""
    systems, std = {}, {}
    for name, runs in per_seed.items():
        if runs:
            systems[name], std[name] = _mean_std(runs)
    return {"systems": systems, "std": std, "seeds": list(seeds)}


def _mean_std(runs: list[dict]) -> tuple[dict, dict]:
    mean, std = {}, {}
    for key, first in runs[0].items():
        if any(isinstance(v, dict) for v in first.values()):  # {report: {metric: value}} one level down
            mean[key], std[key] = _mean_std([r[key] for r in runs])
            continue
        mean[key], std[key] = {}, {}
        for metric in first:
            values = [r[key][metric] for r in runs]
            mean[key][metric] = round(float(np.mean(values)), 4)
            std[key][metric] = round(float(np.std(values)), 4)
    return mean, std


def cell_value(metrics: dict[str, float]) -> float:
    return float(np.mean(list(metrics.values())))


def layout_or_glue(layout: dict | None) -> dict:
    """Which report names make each task's score (`metrics.report_layout`); default: the GLUE tasks'
    (results.json files written before the layout was recorded)."""
    return layout if layout is not None else report_layout(glue_tasks())


def beside_names(layout: dict) -> dict[str, str]:
    """extra evaluation split's report name -> its task."""
    return {r: t for t, lay in layout.items() for r in lay["beside"]}


# ------------------------------------------------------------------------ the paper's Table 3 questions
MIN_GAIN_FOR_SHARE = 0.5  # points (x100): below this the ensemble's gain is within dev-set rounding noise
SHARE_DEFINITION = (
    "share = (MT-DNN-KD - MT-DNN) / (ensemble - MT-DNN), per teacher task: how much of the "
    "ensemble's gain over MT-DNN the student keeps"
)


def compare(systems: dict, teacher_tasks, layout: dict | None = None) -> dict:
    """The paper's Table 3 questions as numbers (x100 points, each task's score = its metrics' mean,
    a task with several dev splits (MNLI-m/mm) scored once on their mean; `metrics.task_scores`):
    MT-DNN-KD vs MT-DNN per task (also on tasks without a teacher), the ensemble's gain over MT-DNN
    on the teacher tasks and the share of it the student keeps, MT-DNN vs single-task. Extra
    evaluation splits of a task (`layout`'s "beside" reports) are compared beside the tasks, never
    counted as tasks."""
    layout = layout_or_glue(layout)
    scores = {s: task_scores(r, layout=layout) for s, r in systems.items()}
    beside = beside_names(layout)
    extra = {s: {rep: cell_value(ms) for rep, ms in r.items() if rep in beside and ms} for s, r in systems.items()}
    teachers = set(teacher_tasks)
    out: dict = {}
    students = {prefix: _diff(scores, system, "mtdnn") for system, prefix in KD_SYSTEMS.items()}
    for system, prefix in KD_SYSTEMS.items():  # the paper's student, then the one with unlabeled text
        out.update(_student_comparison(prefix, students[prefix], _diff(extra, system, "mtdnn"), teachers))
    ensemble_gain = _diff(scores, "ensemble", "mtdnn", teachers)
    if ensemble_gain:
        out["ensemble_minus_mtdnn"] = ensemble_gain
        out["ensemble_gain_kept"] = _gain_kept(students["kd"], ensemble_gain)
        out["ensemble_gain_too_small"] = sorted(t for t, g in ensemble_gain.items() if g < MIN_GAIN_FOR_SHARE)
        if students.get("kd_unlabeled"):
            out["kd_unlabeled_ensemble_gain_kept"] = _gain_kept(students["kd_unlabeled"], ensemble_gain)
    over_single_task = _diff(scores, "mtdnn", "single_task")
    if over_single_task:
        out["mtdnn_minus_single_task"] = over_single_task
        out["mtdnn_beats_single_task"] = _wins(over_single_task)
    return out


def _diff(scores: dict, a: str, b: str, tasks=None) -> dict[str, float]:
    """{task: a's score - b's} over the tasks both have (and in `tasks`, if given)."""
    if a not in scores or b not in scores:
        return {}
    common = [t for t in scores[a] if t in scores[b] and (tasks is None or t in tasks)]
    return {t: round(scores[a][t] - scores[b][t], 4) for t in common}


def _wins(diff: dict[str, float], tasks=None) -> dict:
    """The tasks where the difference is positive, out of how many, and the mean difference."""
    chosen = {t: v for t, v in diff.items() if tasks is None or t in tasks}
    return {
        "tasks": sorted(t for t, v in chosen.items() if v > 0),
        "of": len(chosen),
        "mean_diff": round(float(np.mean(list(chosen.values()))), 4) if chosen else None,
    }


def _student_comparison(prefix: str, student: dict[str, float], extra_splits: dict[str, float], teachers: set) -> dict:
    """One student minus MT-DNN: per task, its wins (over all tasks and over those without a
    teacher) and, apart, on the extra evaluation splits."""
    if not student:
        return {}
    wins, wins_without_teacher = _wins(student), _wins(student, [t for t in student if t not in teachers])
    out = {
        f"{prefix}_minus_mtdnn": student,
        f"{prefix}_beats_mtdnn": {
            **wins,
            "tasks_without_teacher": wins_without_teacher["tasks"],
            "of_without_teacher": wins_without_teacher["of"],
            "mean_diff_without_teacher": wins_without_teacher["mean_diff"],
        },
    }
    if extra_splits:
        out[f"{prefix}_minus_mtdnn_extra_splits"] = extra_splits
    return out


def _gain_kept(student: dict[str, float], ensemble_gain: dict[str, float]) -> dict[str, float]:
    """The share of the ensemble's gain the student keeps (SHARE_DEFINITION), per task where the
    ensemble gained enough for a share to mean something (a 0.1-point gain would turn a 0.7-point
    difference into -700 %)."""
    return {t: round(student[t] / g, 4) for t, g in ensemble_gain.items() if g >= MIN_GAIN_FOR_SHARE and t in student}


# ------------------------------------------------------------------- the decisive experiment's targets
TARGET_ENSEMBLE_GAIN = 1.5  # points: ensemble - MT-DNN on the teacher-task mean, in every seed
TARGET_TASKS_WON = 6 / 8  # share of the tasks where MT-DNN-KD beats MT-DNN
TARGET_GAIN_KEPT = 0.6  # share of the ensemble's gain (teacher-task mean) the student keeps


def targets(results: dict, teacher_tasks) -> list[dict]:
    """The targets of the decisive KD experiment, each {"target", "system", "value", "met"}
    (met: True / False, None where it needs intervals that were not computed)."""
    layout = layout_or_glue(results.get("report_layout"))
    per_seed, comparison = results.get("per_seed", {}), results.get("comparison", {})
    intervals = results.get("intervals", {}).get("comparisons", {})
    out = []
    if "ensemble" in per_seed and BASELINE in per_seed:
        out.append(_ensemble_gain_target(per_seed, layout, set(teacher_tasks)))
    ensemble_gain = comparison.get("ensemble_minus_mtdnn", {})
    for system, prefix in KD_SYSTEMS.items():
        beats = comparison.get(f"{prefix}_beats_mtdnn")
        if not beats:
            continue
        out.append(_beats_target(system, beats, intervals.get(system, {}).get("mean")))
        student_gain = comparison.get(f"{prefix}_minus_mtdnn", {})
        common = [t for t in ensemble_gain if t in student_gain]
        if common:
            out.append(
                _gain_kept_target(
                    system,
                    float(np.mean([ensemble_gain[t] for t in common])),
                    float(np.mean([student_gain[t] for t in common])),
                )
            )
    return out


def _ensemble_gain_target(per_seed: dict, layout: dict, teachers: set) -> dict:
    """Ensemble - MT-DNN on the teacher-task mean, per seed."""
    gains = {}
    for seed, ensemble in per_seed["ensemble"].items():
        if seed in per_seed[BASELINE]:
            ens_scores = task_scores(ensemble, layout=layout)
            mtdnn_scores = task_scores(per_seed[BASELINE][seed], layout=layout)
            common = [t for t in ens_scores if t in mtdnn_scores and t in teachers]
            if common:
                gains[seed] = round(float(np.mean([ens_scores[t] - mtdnn_scores[t] for t in common])), 4)
    return {
        "target": f"ensemble − MT-DNN ≥ {TARGET_ENSEMBLE_GAIN} points on the teacher-task mean in every seed",
        "system": "ensemble",
        "value": {"per_seed": gains},
        "met": bool(gains) and all(v >= TARGET_ENSEMBLE_GAIN for v in gains.values()),
    }


def _beats_target(system: str, beats: dict, mean_interval: dict | None) -> dict:
    """The student beats MT-DNN on enough tasks and on the mean, the mean's interval above 0; not
    measured (None) without an interval unless the counts already fail."""
    need = math.ceil(TARGET_TASKS_WON * beats["of"] - 1e-9)
    counted = len(beats["tasks"]) >= need and (beats["mean_diff"] or 0) > 0
    return {
        "target": f"{SYSTEM_NAMES[system]} beats MT-DNN on ≥ {need} of {beats['of']} tasks and on the mean, "
        "the mean's 95% interval above 0",
        "system": system,
        "value": {
            "tasks_better": len(beats["tasks"]),
            "of": beats["of"],
            "mean_diff": beats["mean_diff"],
            "mean_interval": [mean_interval["low"], mean_interval["high"]] if mean_interval else None,
        },
        "met": (counted and mean_interval["low"] > 0) if mean_interval else (False if not counted else None),
    }


def _gain_kept_target(system: str, ensemble_gain: float, student_gain: float) -> dict:
    """The student keeps enough of the ensemble's gain on the teacher-task mean."""
    kept = student_gain / ensemble_gain if ensemble_gain > 0 else None
    return {
        "target": f"{SYSTEM_NAMES[system]} keeps ≥ {TARGET_GAIN_KEPT:.0%} of the ensemble's gain over "
        "MT-DNN on the teacher-task mean",
        "system": system,
        "value": {
            "student_gain": round(student_gain, 4),
            "ensemble_gain": round(ensemble_gain, 4),
            "kept": round(kept, 4) if kept is not None else None,
        },
        "met": kept is not None and kept >= TARGET_GAIN_KEPT,
    }
