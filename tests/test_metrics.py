"""GLUE metrics (x100), predictions from logits, the GLUE average, tables and leaderboard files."""

from __future__ import annotations

import zipfile

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from mtkd.heads import kind_of
from mtkd.metrics import (
    SUBMISSION_FILES,
    glue_score,
    markdown_table,
    task_scores,
    write_submission_file,
    zip_submission,
)
from mtkd.tasks import HeadKind, glue_tasks, load_task_specs

SPECS = glue_tasks()
Y = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 1])
P = np.array([1, 0, 0, 1, 0, 1, 1, 0, 1, 0])


def test_accuracy_f1_against_sklearn():
    out = kind_of(SPECS["MRPC"]).scores(Y, P)
    assert list(out) == ["accuracy", "f1"]
    assert out["accuracy"] == pytest.approx(100 * accuracy_score(Y, P), abs=1e-4)
    assert out["f1"] == pytest.approx(100 * f1_score(Y, P), abs=1e-4)
    # by hand: 7 of 10 right; tp=4, fp=1, fn=2 -> f1 = 8 / 11
    assert out["accuracy"] == pytest.approx(70.0)
    assert out["f1"] == pytest.approx(100 * 8 / 11, abs=1e-4)


def test_mcc_against_sklearn():
    out = kind_of(SPECS["CoLA"]).scores(Y, P)
    assert list(out) == ["mcc"]
    assert out["mcc"] == pytest.approx(100 * matthews_corrcoef(Y, P), abs=1e-4)
    # tp=4 tn=3 fp=1 fn=2
    hand = (4 * 3 - 1 * 2) / np.sqrt((4 + 1) * (4 + 2) * (3 + 1) * (3 + 2))
    assert out["mcc"] == pytest.approx(100 * hand, abs=1e-4)


def test_multiclass_accuracy():
    y = np.array([0, 1, 2, 2, 1, 0])
    p = np.array([0, 2, 2, 2, 1, 1])
    assert kind_of(SPECS["MNLI"]).scores(y, p) == {"accuracy": pytest.approx(100 * 4 / 6, abs=1e-4)}


def test_pearson_spearman_against_scipy():
    rng = np.random.default_rng(0)
    y = rng.uniform(0, 5, size=30)
    p = y + rng.normal(0, 1.0, size=30)
    out = kind_of(SPECS["STS-B"]).scores(y, p)
    assert list(out) == ["pearson", "spearman"]
    assert out["pearson"] == pytest.approx(100 * pearsonr(y, p)[0], abs=1e-4)
    assert out["spearman"] == pytest.approx(100 * spearmanr(y, p)[0], abs=1e-4)
    assert out["pearson"] != pytest.approx(out["spearman"], abs=1e-3)


def test_correlation_of_constant_predictions_is_zero():
    out = kind_of(SPECS["STS-B"]).scores(np.array([0.0, 1.0, 2.0]), np.array([3.0, 3.0, 3.0]))
    assert out == {"pearson": 0.0, "spearman": 0.0}


# ------------------------------------------------------------------------------------ predictions
def test_classification_predictions_from_logits():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    assert kind_of(SPECS["MNLI"]).predictions(logits).tolist() == [1, 0, 2]


def test_regression_predictions_are_raw_scores():
    """Correlations are computed on the raw predictions; only the submission file is clipped."""
    logits = np.array([[-1.2], [2.5], [7.0], [5.0]])
    np.testing.assert_allclose(kind_of(SPECS["STS-B"]).predictions(logits), [-1.2, 2.5, 7.0, 5.0])


def test_sts_b_correlations_use_unclipped_predictions(tmp_path):
    """Before: predictions were clipped to [0, 5] before pearson/spearman, so out-of-range
    predictions were tied at the bounds (here pearson 99.28 / spearman 98.80 instead of the raw
    predictions' 98.37 / 100)."""
    y = np.array([0.0, 0.5, 1.0, 2.0, 3.0, 4.0, 4.5, 5.0])
    logits = np.array([-1.5, -0.5, 0.9, 2.1, 2.8, 4.4, 5.6, 7.5])[:, None]
    got = kind_of(SPECS["STS-B"]).score(logits, y)
    raw = logits[:, 0]
    assert got["pearson"] == pytest.approx(100 * pearsonr(y, raw)[0], abs=1e-4)
    assert got["spearman"] == pytest.approx(100.0)  # the raw order is the label order
    clipped = np.clip(raw, 0, 5)
    assert got["pearson"] != pytest.approx(100 * pearsonr(y, clipped)[0], abs=0.5)
    assert 100 * spearmanr(y, clipped)[0] < 99.0
    write_submission_file(
        tmp_path / "STS-B.tsv", list(range(8)), kind_of(SPECS["STS-B"]).predictions(logits), SPECS["STS-B"]
    )
    assert [r[1] for r in read_tsv(tmp_path / "STS-B.tsv")[1:]] == [
        "0.000",
        "0.000",
        "0.900",
        "2.100",
        "2.800",
        "4.400",
        "5.000",
        "5.000",
    ]


def _ranking(labels=("entailment", "not_entailment"), positive="entailment"):
    return SPECS["QNLI"].model_copy(
        update=dict(head=HeadKind.RANKING, labels=labels, positive_label=positive, metrics=("accuracy", "f1"))
    )


def test_ranking_predictions_top_per_group():
    spec = _ranking(("0", "1"), "1")
    scores = np.array([[0.1], [0.9], [0.3], [-2.0], [-1.0], [4.0]])
    groups = np.array([7, 7, 7, 3, 3, 5])
    assert kind_of(spec).predictions(scores, groups).tolist() == [0, 1, 0, 0, 1, 1]
    # QNLI's labels: the positive is index 0, so the top candidate gets 0 and the others 1
    assert kind_of(_ranking()).predictions(scores, groups).tolist() == [1, 0, 1, 1, 0, 0]
    # ties: the earlier candidate
    assert kind_of(spec).predictions(np.array([[1.0], [1.0]]), np.array([0, 0])).tolist() == [1, 0]
    with pytest.raises(ValueError, match="per query group"):
        kind_of(spec).predictions(scores)


def test_ranking_metrics_are_per_group_with_any_number_of_positives():
    spec = _ranking()  # relevant = label index 0 (entailment)
    E, N = 0, 1
    #          group 0 (2 relevant)   group 1 (1)   group 2 (none)   group 3 (1)
    groups = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3])
    labels = np.array([E, N, E, N, E, N, N, N, E, N])
    scores = np.array([0.1, 0.5, 0.9, 2.0, 1.0, 0.0, 3.0, 1.0, -1.0, 0.0])[:, None]
    # top per group: idx 2 (relevant: hit), idx 3 (not: miss), idx 6 (no relevant: left out), idx 9 (miss)
    out = kind_of(spec).score(scores, labels, groups)
    assert out["accuracy"] == pytest.approx(100 / 3, abs=1e-3)
    # per candidate: picked = {2, 3, 6, 9}, relevant = {0, 2, 4, 8}: tp 1, fp 3, fn 3 -> f1 = 2/8
    assert out["f1"] == pytest.approx(25.0)
    # the same data as classification-style index order (positive "1") gives the same scores
    flipped = _ranking(("not_entailment", "entailment"), "entailment")
    assert kind_of(flipped).score(scores, 1 - labels, groups) == out
    with pytest.raises(ValueError, match="per query group"):
        kind_of(spec).scores(labels, np.zeros(10, dtype=int))
    # no group with a relevant candidate: accuracy 0 (nothing to find)
    assert kind_of(spec).score(scores[6:8], labels[6:8], groups[6:8])["accuracy"] == 0.0


def test_ranking_submission_file_writes_label_names(tmp_path):
    spec = _ranking()
    preds = kind_of(spec).predictions(np.array([[0.1], [0.9], [0.3]]), np.array([0, 0, 0]))
    write_submission_file(tmp_path / "QNLI.tsv", ["a", "b", "c"], preds, spec)
    assert read_tsv(tmp_path / "QNLI.tsv")[1:] == [
        ["a", "not_entailment"],
        ["b", "entailment"],
        ["c", "not_entailment"],
    ]


# ------------------------------------------------------------------------------ average, table
def test_glue_score_averages_per_task_means():
    results = {
        "MRPC": {"accuracy": 80.0, "f1": 90.0},
        "SST-2": {"accuracy": 70.0},
        "STS-B": {"pearson": 60.0, "spearman": 50.0},
        "AX": {},
    }
    # (85 + 70 + 55) / 3; AX (no metric) does not count
    assert glue_score(results) == pytest.approx(70.0)
    assert glue_score({"MRPC": {"accuracy": 81.0, "f1": 86.0}, "RTE": {"accuracy": 66.0}}) == pytest.approx(74.75)
    assert np.isnan(glue_score({}))


MNLI_BOTH = {
    "MNLI-m": {"accuracy": 80.0},
    "MNLI-mm": {"accuracy": 70.0},
    "RTE": {"accuracy": 60.0},
    "MRPC": {"accuracy": 80.0, "f1": 90.0},
    "AX": {},
}


def test_glue_score_counts_mnli_matched_and_mismatched_as_one_task():
    """Before: (80 + 70 + 60 + 85) / 4 = 73.75, MNLI counted twice. The leaderboard averages
    MNLI-m and MNLI-mm into one MNLI score first: (75 + 60 + 85) / 3."""
    assert task_scores(MNLI_BOTH) == {"MNLI": 75.0, "RTE": 60.0, "MRPC": 85.0}
    assert glue_score(MNLI_BOTH) == pytest.approx(73.3333, abs=1e-4)
    assert glue_score(MNLI_BOTH, load_task_specs({"MNLI": {}, "RTE": {}, "MRPC": {}})) == pytest.approx(
        73.3333, abs=1e-4
    )
    assert "| **average** | | **73.33** |" in markdown_table(MNLI_BOTH).splitlines()
    # only the matched set evaluated: MNLI is that one
    assert task_scores({"MNLI-m": {"accuracy": 80.0}, "RTE": {"accuracy": 60.0}}) == {"MNLI": 80.0, "RTE": 60.0}


def test_task_scores_follow_the_specs_report_names(tmp_path):
    """Teacher selection uses task_scores with the run's specs: a custom task's dev splits with
    their own report names make one task; a report name no spec knows is a task of its own."""
    f = tmp_path / "tasks.yaml"
    f.write_text(
        "Mine:\n  head: classification\n  labels: [a, b]\n  metrics: [accuracy]\n  fields: {text_a: t, label: l}\n"
        "  splits:\n    dev_a: {path: a.tsv, report_as: Mine-a}\n    dev_b: {path: b.tsv, report_as: Mine-b}\n"
    )
    specs = load_task_specs({"Mine": {}, "MNLI": {}}, tasks_file=f)
    results = {
        "Mine-a": {"accuracy": 50.0},
        "Mine-b": {"accuracy": 70.0},
        "MNLI-m": {"accuracy": 90.0},
        "MNLI-mm": {"accuracy": 80.0},
        "Other": {"accuracy": 10.0},
    }
    assert task_scores(results, specs) == {"Mine": 60.0, "MNLI": 85.0, "Other": 10.0}
    assert glue_score(results, specs) == pytest.approx((60 + 85 + 10) / 3, abs=1e-4)
    assert task_scores(results) == {"Mine-a": 50.0, "Mine-b": 70.0, "MNLI": 85.0, "Other": 10.0}  # GLUE table only


def test_markdown_table_rows_and_average():
    results = {"MRPC": {"accuracy": 80.0, "f1": 90.0}, "RTE": {"accuracy": 61.234}}
    md = markdown_table(results, notes={"RTE": "dev is a sample"})
    lines = md.splitlines()
    assert lines[0] == "| task | metric | dev |"
    assert "| MRPC | accuracy | 80.00 |" in lines
    assert "| MRPC | f1 | 90.00 |" in lines
    assert "| RTE | accuracy | 61.23 |" in lines
    assert "| **average** | | **73.12** |" in lines  # (85 + 61.234) / 2
    assert "- RTE: dev is a sample" in lines


# ---------------------------------------------------------------------------------- submission
def read_tsv(path):
    return [line.split("\t") for line in path.read_text().splitlines()]


def test_write_submission_file_classification(tmp_path):
    path = tmp_path / "MNLI-m.tsv"
    write_submission_file(path, ["0", "1", "2", "3"], np.array([2, 0, 1, 1]), SPECS["MNLI"])
    rows = read_tsv(path)
    assert rows[0] == ["index", "prediction"]
    assert rows[1:] == [["0", "neutral"], ["1", "contradiction"], ["2", "entailment"], ["3", "entailment"]]


def test_write_submission_file_regression_three_decimals_clipped(tmp_path):
    path = tmp_path / "STS-B.tsv"
    preds = [1.23456, -0.4, 5.7, 3.0, 4.9996]
    write_submission_file(path, [10, 11, 12, 13, 14], preds, SPECS["STS-B"])
    rows = read_tsv(path)
    assert rows[0] == ["index", "prediction"]
    assert len(rows) - 1 == len(preds)
    assert rows[1:] == [["10", "1.235"], ["11", "0.000"], ["12", "5.000"], ["13", "3.000"], ["14", "5.000"]]


def test_write_submission_file_row_count_equals_inputs(tmp_path):
    path = tmp_path / "SST-2.tsv"
    n = 57
    write_submission_file(path, [str(i) for i in range(n)], np.arange(n) % 2, SPECS["SST-2"])
    rows = read_tsv(path)
    assert len(rows) == n + 1
    assert [r[0] for r in rows[1:]] == [str(i) for i in range(n)]
    assert {r[1] for r in rows[1:]} == {"0", "1"}


def test_zip_submission_lists_missing_files(tmp_path):
    sub = tmp_path / "submission"
    sub.mkdir()
    write_submission_file(sub / "SST-2.tsv", ["0", "1"], [1, 0], SPECS["SST-2"])
    write_submission_file(sub / "STS-B.tsv", ["0"], [2.0], SPECS["STS-B"])
    (sub / "notes.txt").write_text("not part of the submission")
    missing = zip_submission(sub, tmp_path / "submission.zip")
    expected_missing = [f"{n}.tsv" for n in SUBMISSION_FILES if n not in ("SST-2", "STS-B")]
    assert missing == expected_missing
    assert len(SUBMISSION_FILES) == 11
    with zipfile.ZipFile(tmp_path / "submission.zip") as z:
        assert sorted(z.namelist()) == ["MISSING.txt", "SST-2.tsv", "STS-B.tsv"]
        assert z.read("SST-2.tsv") == (sub / "SST-2.tsv").read_bytes()
        text = z.read("MISSING.txt").decode()
    for name in expected_missing:
        assert name in text
    assert "SST-2.tsv" not in text and "STS-B.tsv" not in text


def test_zip_submission_complete_has_no_missing_file(tmp_path):
    sub = tmp_path / "submission"
    sub.mkdir()
    expected = [
        "CoLA.tsv",
        "SST-2.tsv",
        "MRPC.tsv",
        "STS-B.tsv",
        "QQP.tsv",
        "MNLI-m.tsv",
        "MNLI-mm.tsv",
        "QNLI.tsv",
        "RTE.tsv",
        "WNLI.tsv",
        "AX.tsv",
    ]
    for name in expected:
        (sub / name).write_text("index\tprediction\n0\t1\n")
    assert zip_submission(sub, tmp_path / "s.zip") == []
    with zipfile.ZipFile(tmp_path / "s.zip") as z:
        assert sorted(z.namelist()) == sorted(expected)


def test_write_submission_file_refuses_count_mismatch(tmp_path):
    with pytest.raises(ValueError, match="3 ids but 2 predictions"):
        write_submission_file(tmp_path / "SST-2.tsv", ["0", "1", "2"], np.array([1, 0]), SPECS["SST-2"])
