"""Paired bootstrap intervals of each student (and the ensemble) minus MT-DNN (mtkd.stats.paired_bootstrap),
from every seed's per-example dev predictions (seed-S/eval/<system>/predictions.npz)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtkd.config import RunConfig, from_dict
from mtkd.metrics import PREDICTIONS_FILE, load_predictions
from mtkd.report.scores import BASELINE, SYSTEM_NAMES, layout_or_glue
from mtkd.stats import Evaluated, paired_bootstrap
from mtkd.tasks import load_task_specs

INTERVAL_SYSTEMS = ("mtdnn_kd", "mtdnn_kd_unlabeled", "ensemble")  # each compared with BASELINE
INTERVAL_REPLICATES, INTERVAL_LEVEL, INTERVAL_BOOTSTRAP_SEED = 1000, 0.95, 0
INTERVAL_METHOD = (
    f"paired percentile bootstrap over dev examples and seeds (mtkd.stats.paired_bootstrap): each of "
    f"{INTERVAL_REPLICATES} replicates (random generator seed {INTERVAL_BOOTSTRAP_SEED}) draws the seeds "
    "with replacement and each dev set's examples with replacement, the same draw for both systems and "
    "every seed, recomputes both systems' task scores and takes the mean over the drawn seeds of their "
    f"difference; the {INTERVAL_LEVEL:.0%} interval is the 2.5th-97.5th percentile of the replicates, "
    "per task and on the mean over tasks (MNLI-m/mm one task; extra evaluation splits not counted)"
)


def paired_intervals(specs: dict, results: dict, seed_dirs: dict[int, Path]) -> dict:
    """{"intervals": ...} for every system of INTERVAL_SYSTEMS in `results` against MT-DNN, from each
    seed's per-example dev predictions (seed_dirs: seed -> its seed-S folder); {"intervals_note":
    ...} says which were not computed and why (results from before mtkd saved the predictions).
    The ensemble is compared on the teacher tasks (the tasks it has predictions for)."""
    systems = [s for s in INTERVAL_SYSTEMS if s in results.get("systems", {})]
    if BASELINE not in results.get("systems", {}) or not systems:
        return {}
    layout = layout_or_glue(results.get("report_layout"))
    task_layout = {t: lay["reports"] for t, lay in layout.items() if t in specs}
    baseline, missing = _load_seed_predictions(seed_dirs, BASELINE)
    notes = []
    comparisons = {}
    if missing:
        notes.append(
            f"no per-example dev predictions of MT-DNN ({', '.join(missing)}): written by mtkd runs "
            "since the paired intervals were added; rerun the experiment (finished stages are reused)"
        )
    for system in systems if not missing else []:
        runs, gone = _load_seed_predictions(seed_dirs, system)
        if gone:
            notes.append(f"{SYSTEM_NAMES[system]}: no per-example dev predictions ({', '.join(gone)})")
            continue
        try:
            a, b = _paired(baseline, runs)
            result = paired_bootstrap(
                specs,
                a,
                b,
                replicates=INTERVAL_REPLICATES,
                seed=INTERVAL_BOOTSTRAP_SEED,
                level=INTERVAL_LEVEL,
                layout=task_layout,
            )
        except ValueError as e:
            notes.append(f"{SYSTEM_NAMES[system]}: {e}")
            continue
        result["tasks_above_zero"] = [t for t, r in result["tasks"].items() if r["low"] > 0]
        result["mean_above_zero"] = result["mean"]["low"] > 0
        comparisons[system] = result
    out: dict = {}
    if comparisons:
        out["intervals"] = {
            "baseline": BASELINE,
            "method": INTERVAL_METHOD,
            "replicates": INTERVAL_REPLICATES,
            "level": INTERVAL_LEVEL,
            "bootstrap_seed": INTERVAL_BOOTSTRAP_SEED,
            "seeds": sorted(int(s) for s in seed_dirs),
            "comparisons": comparisons,
        }
    if notes:
        out["intervals_note"] = "; ".join(notes)
    return out


def interval_specs(config: dict) -> dict:
    """The task definitions of a results.json's config (what the paired bootstrap scores with)."""
    cfg = from_dict(RunConfig, {k: v for k, v in config.items()}, "results.json: config")
    return load_task_specs({n: o.override for n, o in cfg.tasks.items()}, cfg.tasks_file)


def _load_seed_predictions(seed_dirs: dict[int, Path], system: str) -> tuple[list[dict], list[str]]:
    """Each seed's {report: predictions} of `system` (seed-S/eval/<system>/predictions.npz), and the
    files that are missing."""
    runs, missing = [], []
    for _, folder in sorted(seed_dirs.items()):
        path = Path(folder) / "eval" / system / PREDICTIONS_FILE
        if path.is_file():
            runs.append(load_predictions(path))
        else:
            missing.append(str(path))
    return runs, missing


def _paired(base: list[dict], other: list[dict]) -> tuple[list[dict], list[dict]]:
    """{report: Evaluated} per seed for MT-DNN and another system, over the reports both have; the
    two must have predicted the same dev examples (ids) in the same order."""
    a, b = [], []
    for ra, rb in zip(base, other, strict=False):
        common = [r for r in ra if r in rb]
        for r in common:
            if not np.array_equal(ra[r]["ids"], rb[r]["ids"]):
                raise ValueError(f"{r}: the two systems' predictions are for different dev examples")
        a.append({r: Evaluated(ra[r]["labels"], ra[r]["predictions"], ra[r].get("groups")) for r in common})
        b.append({r: Evaluated(rb[r]["labels"], rb[r]["predictions"], rb[r].get("groups")) for r in common})
    return a, b
