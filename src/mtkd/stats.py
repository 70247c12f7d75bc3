"""Paired comparisons of two systems over seeds, with bootstrap confidence intervals.

The question "does MT-DNN-KD beat MT-DNN?" has two sources of noise: which dev examples were drawn
(finite dev sets) and which seed trained the models. `paired_bootstrap` resamples both: each
replicate draws the seeds with replacement and, per task, the dev examples with replacement (the
same examples for both systems and every seed: the comparison is paired), recomputes every task's
score (its metrics' mean, x100, as in `metrics.task_scores`) for both systems, and takes the
difference B - A per task and on the mean over tasks. The interval is the 2.5-97.5 percentile of
the replicates (percentile bootstrap). Ranking tasks resample query groups, not candidates. A task
scored on several dev splits (MNLI-m and MNLI-mm) is the mean of its splits' scores, each split
resampled on its own (`layout`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mtkd.heads import kind_of
from mtkd.tasks import TaskSpec


@dataclass(frozen=True)
class Evaluated:
    """One system's dev predictions on one task for one seed: labels, predictions (label indices,
    or scores for regression) and query groups (ranking), aligned row for row."""

    labels: np.ndarray
    predictions: np.ndarray
    groups: np.ndarray | None = None


def task_score(spec: TaskSpec, ev: Evaluated, rows: np.ndarray | None = None) -> float:
    """The mean of the task's metrics (x100) on `rows` of the split (default: all), as its head kind's
    `fast_scores` computes them."""
    y, p, groups = ev.labels, ev.predictions, ev.groups
    if rows is not None:
        y, p = y[rows], p[rows]
        groups = None if groups is None else _relabel_copies(groups, rows)  # a group drawn twice is two queries
    return float(np.mean(list(kind_of(spec).fast_scores(y, p, groups).values())))


def _relabel_copies(groups: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """Rows drawn group by group (`_draw`): consecutive runs of one group are one copy."""
    g = groups[rows]
    starts = np.r_[True, (g[1:] != g[:-1]) | (np.diff(rows) <= 0)]
    return np.cumsum(starts)


def _group_members(groups: np.ndarray | None) -> list[np.ndarray] | None:
    """The rows of each query group, ascending, groups in sorted id order (None: ungrouped)."""
    if groups is None:
        return None
    _, first, inverse = np.unique(groups, return_index=True, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.cumsum(np.bincount(inverse, minlength=len(first)))[:-1]
    return np.split(order, bounds)


def _draw(rng: np.random.Generator, n: int, members: list[np.ndarray] | None) -> np.ndarray:
    """Row indices of one bootstrap sample: n rows with replacement, or whole query groups
    (`members`: `_group_members` of the split)."""
    if members is None:
        return rng.integers(0, n, n)
    picked = rng.integers(0, len(members), len(members))
    return np.concatenate([members[k] for k in picked])


def paired_bootstrap(
    specs: dict[str, TaskSpec],
    system_a: list[dict[str, Evaluated]],
    system_b: list[dict[str, Evaluated]],
    replicates: int = 1000,
    seed: int = 0,
    level: float = 0.95,
    layout: dict[str, list[str]] | None = None,
) -> dict:
    """B - A per task and on the mean over tasks, with a percentile bootstrap interval.

    system_a / system_b: one {name: Evaluated} per seed, the same seeds in the same order, the same
    dev rows for both (labels must match). `layout` says which names make each task's score (task ->
    names, e.g. MNLI -> [MNLI-m, MNLI-mm]: the task's score is the mean of its splits' scores, each
    split resampled on its own); default: each task of `specs` is one name. `specs` holds the tasks.
    A task counts when all its names are evaluated for both systems in every seed.
    Returns {"tasks": {task: {"diff", "low", "high", "per_seed": [...]}}, "mean": {...},
    "replicates", "level", "seeds"}; "diff" is the observed difference of the seed-mean scores."""
    if len(system_a) != len(system_b) or not system_a:
        raise ValueError(
            f"paired comparison needs the same seeds for both systems ({len(system_a)} vs {len(system_b)})"
        )
    layout = (
        {t: [t] for t in specs} if layout is None else {t: list(names) for t, names in layout.items() if t in specs}
    )
    tasks = [t for t, names in layout.items() if names and all(n in s for n in names for s in system_a + system_b)]
    if not tasks:
        raise ValueError("no task is evaluated for both systems in every seed")
    for t in tasks:
        for name in layout[t]:
            for a, b in zip(system_a, system_b, strict=False):
                if len(a[name].labels) != len(b[name].labels) or not np.array_equal(a[name].labels, b[name].labels):
                    raise ValueError(f"{name}: the two systems were evaluated on different dev rows")

    def score(system: dict[str, Evaluated], t: str, rows: dict[str, np.ndarray] | None = None) -> float:
        return float(np.mean([task_score(specs[t], system[n], None if rows is None else rows[n]) for n in layout[t]]))

    n_seeds = len(system_a)
    observed = {t: [score(b, t) - score(a, t) for a, b in zip(system_a, system_b, strict=False)] for t in tasks}
    members = {n: _group_members(system_a[0][n].groups) for t in tasks for n in layout[t]}
    rng = np.random.default_rng(seed)
    boot = np.zeros((replicates, len(tasks)))
    for r in range(replicates):
        seeds = rng.integers(0, n_seeds, n_seeds)
        for j, t in enumerate(tasks):
            rows = {n: _draw(rng, len(system_a[0][n].labels), members[n]) for n in layout[t]}
            boot[r, j] = np.mean([score(system_b[s], t, rows) - score(system_a[s], t, rows) for s in seeds])
    tail = 100 * (1 - level) / 2

    def summary(point: float, samples: np.ndarray, per_seed: list[float]) -> dict:
        low, high = np.percentile(samples, [tail, 100 - tail])
        return {
            "diff": round(float(point), 4),
            "low": round(float(low), 4),
            "high": round(float(high), 4),
            "per_seed": [round(float(v), 4) for v in per_seed],
        }

    out = {t: summary(np.mean(observed[t]), boot[:, j], observed[t]) for j, t in enumerate(tasks)}
    mean_per_seed = [float(np.mean([observed[t][s] for t in tasks])) for s in range(n_seeds)]
    return {
        "tasks": out,
        "mean": summary(np.mean(mean_per_seed), boot.mean(axis=1), mean_per_seed),
        "replicates": replicates,
        "level": level,
        "seeds": n_seeds,
    }
