"""GLUE metrics (x100), predictions from logits, the GLUE average, tables and leaderboard files."""

from __future__ import annotations

import dataclasses
import zipfile

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from mtkd.metrics import (SUBMISSION_FILES, compute_metrics, glue_score, markdown_table, predictions_from_logits,
                          save_results, write_submission_file, zip_submission)
from mtkd.tasks import HeadKind, glue_tasks

SPECS = glue_tasks()
Y = np.array([1, 0, 1, 1, 0, 1, 0, 0, 1, 1])
P = np.array([1, 0, 0, 1, 0, 1, 1, 0, 1, 0])


def test_accuracy_f1_against_sklearn():
    out = compute_metrics(SPECS["MRPC"], Y, P)
    assert list(out) == ["accuracy", "f1"]
    assert out["accuracy"] == pytest.approx(100 * accuracy_score(Y, P), abs=1e-4)
    assert out["f1"] == pytest.approx(100 * f1_score(Y, P), abs=1e-4)
    # by hand: 7 of 10 right; tp=4, fp=1, fn=2 -> f1 = 8 / 11
    assert out["accuracy"] == pytest.approx(70.0)
    assert out["f1"] == pytest.approx(100 * 8 / 11, abs=1e-4)


def test_mcc_against_sklearn():
    out = compute_metrics(SPECS["CoLA"], Y, P)
    assert list(out) == ["mcc"]
    assert out["mcc"] == pytest.approx(100 * matthews_corrcoef(Y, P), abs=1e-4)
    # tp=4 tn=3 fp=1 fn=2
    hand = (4 * 3 - 1 * 2) / np.sqrt((4 + 1) * (4 + 2) * (3 + 1) * (3 + 2))
    assert out["mcc"] == pytest.approx(100 * hand, abs=1e-4)


def test_multiclass_accuracy():
    y = np.array([0, 1, 2, 2, 1, 0])
    p = np.array([0, 2, 2, 2, 1, 1])
    assert compute_metrics(SPECS["MNLI"], y, p) == {"accuracy": pytest.approx(100 * 4 / 6, abs=1e-4)}


def test_pearson_spearman_against_scipy():
    rng = np.random.default_rng(0)
    y = rng.uniform(0, 5, size=30)
    p = y + rng.normal(0, 1.0, size=30)
    out = compute_metrics(SPECS["STS-B"], y, p)
    assert list(out) == ["pearson", "spearman"]
    assert out["pearson"] == pytest.approx(100 * pearsonr(y, p)[0], abs=1e-4)
    assert out["spearman"] == pytest.approx(100 * spearmanr(y, p)[0], abs=1e-4)
    assert out["pearson"] != pytest.approx(out["spearman"], abs=1e-3)


def test_correlation_of_constant_predictions_is_zero():
    out = compute_metrics(SPECS["STS-B"], np.array([0.0, 1.0, 2.0]), np.array([3.0, 3.0, 3.0]))
    assert out == {"pearson": 0.0, "spearman": 0.0}


# ------------------------------------------------------------------------------------ predictions
def test_predictions_from_logits_classification():
    logits = np.array([[0.1, 2.0, -1.0], [3.0, 0.0, 0.0], [0.0, 0.0, 5.0]])
    assert predictions_from_logits(SPECS["MNLI"], logits).tolist() == [1, 0, 2]


def test_predictions_from_logits_regression_clips_to_label_range():
    logits = np.array([[-1.2], [2.5], [7.0], [5.0]])
    assert predictions_from_logits(SPECS["STS-B"], logits).tolist() == [0.0, 2.5, 5.0, 5.0]
    unclipped = dataclasses.replace(SPECS["STS-B"], label_range=None)
    assert predictions_from_logits(unclipped, logits).tolist() == [-1.2, 2.5, 7.0, 5.0]


def test_predictions_from_logits_ranking_top_per_group():
    spec = dataclasses.replace(SPECS["QNLI"], head=HeadKind.RANKING, labels=("0", "1"))
    scores = np.array([[0.1], [0.9], [0.3], [-2.0], [-1.0], [4.0]])
    groups = np.array([7, 7, 7, 3, 3, 5])
    assert predictions_from_logits(spec, scores, groups).tolist() == [0, 1, 0, 0, 1, 1]


# ------------------------------------------------------------------------------ average, table
def test_glue_score_averages_per_task_means():
    results = {"MRPC": {"accuracy": 80.0, "f1": 90.0}, "SST-2": {"accuracy": 70.0},
               "STS-B": {"pearson": 60.0, "spearman": 50.0}, "AX": {}}
    # (85 + 70 + 55) / 3; AX (no metric) does not count
    assert glue_score(results) == pytest.approx(70.0)
    assert glue_score({"MRPC": {"accuracy": 81.0, "f1": 86.0}, "RTE": {"accuracy": 66.0}}) == pytest.approx(74.75)
    assert np.isnan(glue_score({}))


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


def test_save_results(tmp_path):
    import json

    results = {"SST-2": {"accuracy": 91.5}}
    save_results(results, tmp_path / "r.json", tmp_path / "r.md")
    assert json.loads((tmp_path / "r.json").read_text()) == results
    assert "| SST-2 | accuracy | 91.50 |" in (tmp_path / "r.md").read_text()


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
    expected = ["CoLA.tsv", "SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "QQP.tsv", "MNLI-m.tsv", "MNLI-mm.tsv",
                "QNLI.tsv", "RTE.tsv", "WNLI.tsv", "AX.tsv"]
    for name in expected:
        (sub / name).write_text("index\tprediction\n0\t1\n")
    assert zip_submission(sub, tmp_path / "s.zip") == []
    with zipfile.ZipFile(tmp_path / "s.zip") as z:
        assert sorted(z.namelist()) == sorted(expected)


def test_write_submission_file_refuses_count_mismatch(tmp_path):
    with pytest.raises(ValueError, match="3 ids but 2 predictions"):
        write_submission_file(tmp_path / "SST-2.tsv", ["0", "1", "2"], np.array([1, 0]), SPECS["SST-2"])
