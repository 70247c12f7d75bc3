"""The KD report (issue 14 item 9): means and "N of M tasks" count tasks (MNLI-m/mm make one MNLI,
a custom task's extra evaluation split is reported beside its task, not counted), and the share of
the ensemble's gain is defined under the table and printed only where it means something."""

from __future__ import annotations

import json

import pytest

from mtkd.metrics import report_layout
from mtkd.report import aggregate, combine, compare, results_markdown
from mtkd.tasks import load_task_specs

IMDB = (
    "IMDB:\n  head: classification\n  labels: [neg, pos]\n  metrics: [accuracy]\n  fields: {text_a: t, label: l}\n"
    "  splits:\n    train: i/train.tsv\n    dev: i/dev.tsv\n    dev_ood: {path: i/ood.tsv, report_as: IMDB-ood}\n"
)

SYSTEMS = {
    "mtdnn": {
        "SST-2": {"accuracy": 80.0},
        "MNLI-m": {"accuracy": 70.0},
        "MNLI-mm": {"accuracy": 72.0},
        "RTE": {"accuracy": 60.0},
        "QQP": {"accuracy": 80.0},
        "IMDB": {"accuracy": 85.0},
        "IMDB-ood": {"accuracy": 70.0},
    },
    "ensemble": {
        "MNLI-m": {"accuracy": 71.0},
        "MNLI-mm": {"accuracy": 71.4},
        "RTE": {"accuracy": 60.5},
        "QQP": {"accuracy": 79.0},
    },
    "mtdnn_kd": {
        "SST-2": {"accuracy": 81.0},
        "MNLI-m": {"accuracy": 70.5},
        "MNLI-mm": {"accuracy": 72.1},
        "RTE": {"accuracy": 61.855},
        "QQP": {"accuracy": 79.5},
        "IMDB": {"accuracy": 84.0},
        "IMDB-ood": {"accuracy": 75.0},
    },
}
TEACHERS = ["MNLI", "RTE", "QQP"]


@pytest.fixture
def layout(tmp_path):
    f = tmp_path / "tasks.yaml"
    f.write_text(IMDB)
    specs = load_task_specs({t: {} for t in ("SST-2", "MNLI", "RTE", "QQP", "IMDB")}, tasks_file=f)
    return report_layout(specs)


def test_report_layout_says_which_reports_make_each_tasks_score(layout):
    assert layout["MNLI"] == {"reports": ["MNLI-m", "MNLI-mm"], "beside": []}  # one task, the mean of both
    assert layout["IMDB"] == {"reports": ["IMDB"], "beside": ["IMDB-ood"]}  # the extra split beside it
    assert layout["SST-2"] == {"reports": ["SST-2"], "beside": []}


def test_counts_and_means_are_over_tasks_not_splits(layout):
    c = compare(SYSTEMS, TEACHERS, layout)
    # before: 7 report names were 7 "tasks" (MNLI twice, IMDB-ood one more): "5 of 7 tasks"
    assert c["kd_minus_mtdnn"] == {"SST-2": 1.0, "MNLI": 0.3, "RTE": 1.855, "QQP": -0.5, "IMDB": -1.0}
    assert c["kd_beats_mtdnn"] == {
        "tasks": ["MNLI", "RTE", "SST-2"],
        "of": 5,
        "mean_diff": round(1.655 / 5, 4),
        "tasks_without_teacher": ["SST-2"],
        "of_without_teacher": 2,
        "mean_diff_without_teacher": 0.0,
    }
    assert c["kd_minus_mtdnn_extra_splits"] == {"IMDB-ood": 5.0}  # reported, not counted
    md = results_markdown({"systems": SYSTEMS, "seeds": [1], "comparison": c, "report_layout": layout})
    assert (
        "MT-DNN-KD better than MT-DNN on 3 of 5 tasks (mean +0.33); on tasks without a teacher 1 of 2 (mean +0.00)."
        in md
    )
    assert "extra evaluation splits (not counted): IMDB-ood +5.0" in md
    rows = {line.split(" | ")[0].lstrip("| "): line for line in md.splitlines() if line.startswith("| ")}
    assert rows["MT-DNN"].endswith("| 75.2 |")  # (80 + 71 + 60 + 80 + 85) / 5; before: 517 / 7 = 73.9
    assert rows["MT-DNN-KD"].endswith("| **75.5** |")  # (81 + 71.3 + 61.855 + 79.5 + 84) / 5
    assert rows["MT-DNN ensemble (teachers)"].endswith("| 70.2 |")  # (71.2 + 60.5 + 79) / 3 teacher tasks
    assert "| IMDB-ood (accuracy; extra split of IMDB) |" in rows["system"]
    assert "Extra evaluation splits (IMDB-ood) are shown beside their task and left out of the means" in md


def test_share_of_the_ensemble_gain_is_defined_and_capped(layout):
    c = compare(SYSTEMS, TEACHERS, layout)
    assert c["ensemble_minus_mtdnn"] == {"MNLI": 0.2, "RTE": 0.5, "QQP": -1.0}
    assert c["ensemble_gain_kept"] == {"RTE": 3.71}  # the exact share stays in results.json
    assert c["ensemble_gain_too_small"] == ["MNLI", "QQP"]
    md = results_markdown({"systems": SYSTEMS, "seeds": [1], "comparison": c, "report_layout": layout})
    assert "371%" not in md and "371 %" not in md
    assert "share of that gain the student keeps: MNLI —, RTE over 100%, QQP —." in md
    assert "share = (MT-DNN-KD - MT-DNN) / (ensemble - MT-DNN), per teacher task" in md
    assert "— : ensemble gain < 0.5: share not meaningful" in md


def test_results_without_a_layout_use_the_glue_one():
    """results.json files written before the layout was recorded: MNLI-m/mm are still one MNLI."""
    systems = {s: {k: v for k, v in r.items() if not k.startswith("IMDB")} for s, r in SYSTEMS.items()}
    c = compare(systems, TEACHERS)
    assert set(c["kd_minus_mtdnn"]) == {"SST-2", "MNLI", "RTE", "QQP"} and c["kd_beats_mtdnn"]["of"] == 4
    assert "kd_minus_mtdnn_extra_splits" not in c


def test_aggregate_averages_the_test_entries_too():
    runs = [
        {"IMDB": {"accuracy": 80.0}, "test": {"IMDB": {"accuracy": 70.0}}},
        {"IMDB": {"accuracy": 84.0}, "test": {"IMDB": {"accuracy": 74.0}}},
    ]
    agg = aggregate({"mtdnn": runs}, [1, 2])
    assert agg["systems"]["mtdnn"] == {"IMDB": {"accuracy": 82.0}, "test": {"IMDB": {"accuracy": 72.0}}}
    assert agg["std"]["mtdnn"] == {"IMDB": {"accuracy": 2.0}, "test": {"IMDB": {"accuracy": 2.0}}}


def test_combine_keeps_the_layout(layout, tmp_path):
    paths = []
    for seed in (1, 2):
        res = {
            **aggregate({s: [r] for s, r in SYSTEMS.items()}, [seed]),
            "report_layout": layout,
            "config": {"seeds": [seed], "kd": {"teacher_tasks": TEACHERS}},
            "notes": {},
            "timings": {},
        }
        res["per_seed"] = {s: {str(seed): r} for s, r in SYSTEMS.items()}
        paths.append(tmp_path / f"r{seed}.json")
        paths[-1].write_text(json.dumps(res))
    out = combine(paths, tmp_path / "both")
    assert out["report_layout"] == layout and out["comparison"]["kd_beats_mtdnn"]["of"] == 5
    assert json.loads((tmp_path / "both" / "results.json").read_text())["report_layout"] == layout
