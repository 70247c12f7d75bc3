"""The paired bootstrap of mtkd.stats on inputs whose answer is known."""

import numpy as np
import pytest

from mtkd.stats import Evaluated, paired_bootstrap, task_score
from mtkd.tasks import glue_tasks

SPECS = glue_tasks()


def _classification(labels, correct):
    """Predictions equal to the labels where `correct`, the other class elsewhere."""
    labels = np.asarray(labels)
    return Evaluated(labels, np.where(correct, labels, 1 - labels))


def test_identical_systems_give_a_zero_interval():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    seeds = [{"RTE": _classification(y, rng.random(300) < 0.6)} for _ in range(3)]
    res = paired_bootstrap({"RTE": SPECS["RTE"]}, seeds, seeds, replicates=200)
    assert res["tasks"]["RTE"] == {"diff": 0.0, "low": 0.0, "high": 0.0, "per_seed": [0.0, 0.0, 0.0]}
    assert res["mean"]["diff"] == 0.0


def test_a_uniformly_better_system_has_an_interval_above_zero_around_the_observed_difference():
    n = 1000
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, n)
    base = rng.random(n) < 0.6
    better = base | (rng.random(n) < 0.1)  # right wherever A is, and on ~4 % more rows
    a = [{"RTE": _classification(y, base)}]
    b = [{"RTE": _classification(y, better)}]
    res = paired_bootstrap({"RTE": SPECS["RTE"]}, a, b, replicates=500)
    exact = 100 * (better.mean() - base.mean())
    r = res["tasks"]["RTE"]
    assert r["diff"] == pytest.approx(exact, abs=1e-3)
    assert 0 < r["low"] < exact < r["high"]
    # paired accuracy difference: the normal approximation of its standard error
    d = better.astype(float) - base.astype(float)
    se = 100 * d.std(ddof=1) / np.sqrt(n)
    assert (r["high"] - r["low"]) == pytest.approx(2 * 1.96 * se, rel=0.25)


def test_seed_noise_widens_the_interval_and_the_mean_averages_tasks():
    n = 400
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, n)
    y_sst = rng.integers(0, 2, n)
    a, b = [], []
    for gain in (-4.0, 0.0, 8.0):  # per-seed gains of B over A on RTE: +-4 points of seed noise
        base = rng.random(n) < 0.6
        flip = (
            np.flatnonzero(~base)[: int(abs(gain) / 100 * n)]
            if gain > 0
            else np.flatnonzero(base)[: int(abs(gain) / 100 * n)]
        )
        better = base.copy()
        better[flip] = gain > 0
        a.append({"RTE": _classification(y, base), "SST-2": _classification(y_sst, base)})
        b.append({"RTE": _classification(y, better), "SST-2": _classification(y_sst, base)})
    res = paired_bootstrap({"RTE": SPECS["RTE"], "SST-2": SPECS["SST-2"]}, a, b, replicates=400)
    rte = res["tasks"]["RTE"]
    assert rte["per_seed"] == pytest.approx([-4.0, 0.0, 8.0], abs=0.01)
    assert rte["diff"] == pytest.approx(4 / 3, abs=0.01)
    assert rte["low"] < 0 < rte["high"]  # three seeds that disagree: not significant
    assert res["tasks"]["SST-2"]["diff"] == 0.0
    assert res["mean"]["diff"] == pytest.approx(rte["diff"] / 2, abs=0.01)
    assert res["mean"]["low"] == pytest.approx(rte["low"] / 2, abs=0.5)


def test_regression_and_two_metric_tasks_use_the_task_score():
    rng = np.random.default_rng(4)
    y = rng.uniform(0, 5, 200)
    ev = Evaluated(y, y + rng.normal(0, 1, 200))
    # STS-B's score is the mean of Pearson and Spearman, x100
    from scipy.stats import pearsonr, spearmanr

    expected = 50 * (pearsonr(y, ev.predictions)[0] + spearmanr(y, ev.predictions)[0])
    assert task_score(SPECS["STS-B"], ev) == pytest.approx(expected, abs=1e-3)


def test_ranking_tasks_resample_whole_query_groups():
    from mtkd.tasks import task_from_dict

    spec = task_from_dict(
        "R",
        {
            "head": "ranking",
            "fields": {"text_a": "q", "text_b": "c", "label": "l"},
            "metrics": ["accuracy"],
            "splits": {"dev": "x.tsv"},
        },
    )
    groups = np.repeat(np.arange(50), 4)
    labels = np.tile([1, 0, 0, 0], 50)
    good = labels.copy()  # top-scored candidate relevant in every group
    bad = np.tile([0, 1, 0, 0], 50)
    a = [{"R": Evaluated(labels, bad, groups)}]
    b = [{"R": Evaluated(labels, good, groups)}]
    res = paired_bootstrap({"R": spec}, a, b, replicates=100)
    assert res["tasks"]["R"] == {"diff": 100.0, "low": 100.0, "high": 100.0, "per_seed": [100.0]}


def test_refuses_unpaired_inputs():
    y = np.array([0, 1, 0, 1])
    with pytest.raises(ValueError, match="same seeds"):
        paired_bootstrap({"RTE": SPECS["RTE"]}, [{"RTE": _classification(y, y == 0)}], [])
    with pytest.raises(ValueError, match="different dev rows"):
        paired_bootstrap(
            {"RTE": SPECS["RTE"]}, [{"RTE": _classification(y, y == 0)}], [{"RTE": _classification(y[:3], y[:3] == 0)}]
        )


@pytest.mark.parametrize("task", ["CoLA", "SST-2", "MRPC", "STS-B", "MNLI"])
def test_the_fast_task_score_equals_the_metrics_module(task):
    from mtkd.heads import kind_of

    spec = SPECS[task]
    rng = np.random.default_rng(5)
    if task == "STS-B":
        y = rng.uniform(0, 5, 300)
        p = y + rng.normal(0, 1.5, 300)
    else:
        y = rng.integers(0, len(spec.labels), 300)
        p = np.where(rng.random(300) < 0.6, y, rng.integers(0, len(spec.labels), 300))
    expected = float(np.mean(list(kind_of(spec).scores(y, p).values())))
    assert task_score(spec, Evaluated(y, p)) == pytest.approx(expected, abs=1e-3)
    rows = rng.integers(0, 300, 300)
    expected = float(np.mean(list(kind_of(spec).scores(y[rows], p[rows]).values())))
    assert task_score(spec, Evaluated(y, p), rows) == pytest.approx(expected, abs=1e-3)
    assert task_score(spec, Evaluated(y, np.zeros_like(p))) == pytest.approx(
        float(np.mean(list(kind_of(spec).scores(y, np.zeros_like(p)).values()))), abs=1e-3
    )


def test_a_task_of_several_dev_splits_scores_the_mean_of_its_splits():
    """MNLI-m and MNLI-mm make one MNLI (`layout`): its difference is the mean of the two splits',
    each split resampled on its own; a task missing one of its splits is not counted."""
    n = 600
    rng = np.random.default_rng(6)
    y_m, y_mm = rng.integers(0, 3, n), rng.integers(0, 3, n)
    base_m, base_mm = rng.random(n) < 0.6, rng.random(n) < 0.6
    better_m = base_m | (rng.random(n) < 0.15)

    def ev(y, right):
        return Evaluated(y, np.where(right, y, (y + 1) % 3))

    a = [{"MNLI-m": ev(y_m, base_m), "MNLI-mm": ev(y_mm, base_mm)}]
    b = [{"MNLI-m": ev(y_m, better_m), "MNLI-mm": ev(y_mm, base_mm)}]
    layout = {"MNLI": ["MNLI-m", "MNLI-mm"]}
    res = paired_bootstrap({"MNLI": SPECS["MNLI"]}, a, b, replicates=300, layout=layout)
    exact = 100 * (better_m.mean() - base_m.mean()) / 2  # MNLI-mm unchanged: half the MNLI-m gain
    r = res["tasks"]["MNLI"]
    assert set(res["tasks"]) == {"MNLI"} and r["diff"] == pytest.approx(exact, abs=1e-3)
    assert 0 < r["low"] < exact < r["high"] and res["mean"]["diff"] == r["diff"]
    alone = paired_bootstrap({"MNLI": SPECS["MNLI"]}, a, b, replicates=300, layout={"MNLI": ["MNLI-m"]})["tasks"][
        "MNLI"
    ]
    assert alone["diff"] == pytest.approx(2 * exact, abs=1e-3)
    assert (r["high"] - r["low"]) == pytest.approx((alone["high"] - alone["low"]) / 2, rel=0.3)
    with pytest.raises(ValueError, match="no task is evaluated"):
        paired_bootstrap({"MNLI": SPECS["MNLI"]}, a, [{"MNLI-m": b[0]["MNLI-m"]}], replicates=10, layout=layout)


def test_the_default_layout_is_one_name_per_task():
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 200)
    a = [
        {"RTE": _classification(y, rng.random(200) < 0.6), "SST-2": _classification(y, rng.random(200) < 0.7)}
        for _ in range(2)
    ]
    b = [
        {"RTE": _classification(y, rng.random(200) < 0.65), "SST-2": _classification(y, rng.random(200) < 0.7)}
        for _ in range(2)
    ]
    specs = {"RTE": SPECS["RTE"], "SST-2": SPECS["SST-2"]}
    assert paired_bootstrap(specs, a, b, replicates=100) == paired_bootstrap(
        specs, a, b, replicates=100, layout={"RTE": ["RTE"], "SST-2": ["SST-2"]}
    )
