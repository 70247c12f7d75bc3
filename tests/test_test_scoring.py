"""Labelled test sets are scored (issue 14 item 3): `mtkd run` writes them under "test" in
metrics.json beside dev, `mtkd evaluate --split test` scores them, unlabelled (empty label column)
and absent test files are listed, not scored; a config without a GLUE task gets per-task test
predictions and no leaderboard zip or warning. Also `mtkd evaluate` with a config listing a subset
of the model's tasks (item 4)."""

from __future__ import annotations

import csv
import json
import logging
import random
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from conftest import _sentence, tiny_config
from mtkd.cli import main
from mtkd.data import read_split
from mtkd.errors import DataError
from mtkd.metrics import glue_score
from mtkd.model import MTModel
from mtkd.tasks import task_from_dict

N_TEST = 20
TASKS = {
    "Reviews": {
        "head": "classification",
        "labels": ["neg", "pos"],
        "metrics": ["accuracy", "f1"],
        "fields": {"id": "id", "text_a": "text", "label": "label"},
        "splits": {
            "train": "Reviews/train.csv",
            "dev": "Reviews/dev.csv",
            "test": "Reviews/test.csv",
            "test_extra": {"path": "Reviews/absent.csv", "report_as": "Reviews-extra"},
        },
    },
    "Notes": {
        "head": "classification",
        "labels": ["neg", "pos"],
        "metrics": ["accuracy"],
        "fields": {"id": "id", "text_a": "text", "label": "label"},
        "splits": {"train": "Notes/train.tsv", "dev": "Notes/dev.tsv", "test": "Notes/test.tsv"},
    },
}


def _write(root, seed=0):
    rng = random.Random(seed)
    for task, sep, ext in (("Reviews", ",", "csv"), ("Notes", "\t", "tsv")):
        (root / task).mkdir(parents=True, exist_ok=True)
        for split, n in (("train", 32), ("dev", 16), ("test", N_TEST)):
            rows = []
            for i in range(n):
                y = rng.random() < 0.5
                label = "" if (task, split) == ("Notes", "test") else ("pos" if y else "neg")  # empty label column
                rows.append(sep.join([f"{split}{i}", _sentence(rng, y), label]) + "\n")
            (root / task / f"{split}.{ext}").write_text(sep.join(["id", "text", "label"]) + "\n" + "".join(rows))
    return root


# the tests that read `run` (an `mtkd run`) are marked integration
@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_encoder):
    base = tmp_path_factory.mktemp("test-scoring")
    root = _write(base / "data")
    (base / "tasks.yaml").write_text(yaml.safe_dump(TASKS))
    raw = tiny_config(root, tiny_encoder, base / "cache", tasks=(), stages=["mtl", "evaluate", "predict"])
    raw.update(tasks_file=str(base / "tasks.yaml"), tasks={"Reviews": {}, "Notes": {}})
    raw["mtl"].update(epochs=6, lr=2e-3)  # enough to predict both labels (dev 93.75, test 85.0 here)
    cfg = base / "config.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out = base / "out"
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger, level = logging.getLogger("mtkd"), logging.getLogger("mtkd").level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        assert main(["run", str(cfg), "--output-dir", str(out)]) == 0
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    return SimpleNamespace(
        base=base,
        root=root,
        raw=raw,
        cfg=cfg,
        out=out,
        model=out / "seed-0" / "mtl" / "model",
        log="\n".join(r.getMessage() for r in records),
    )


def _accuracy_and_f1(model, path, task="Reviews"):
    rows = list(csv.DictReader(path.open()))
    preds = model.predict(task, [r["text"] for r in rows])
    y = np.array([r["label"] == "pos" for r in rows])
    p = np.array([x == "pos" for x in preds])
    assert 0 < p.sum() < len(p)  # a model predicting one label everywhere would make the check weak
    tp = int((y & p).sum())
    f1 = 2 * tp / (y.sum() + p.sum()) if y.sum() + p.sum() else 0.0
    return 100 * float((y == p).mean()), 100 * f1


@pytest.mark.integration
def test_run_scores_the_labelled_test_split_beside_dev(run):
    metrics = json.loads((run.out / "metrics.json").read_text())
    assert set(metrics) == {"Reviews", "Notes", "test"}
    assert set(metrics["test"]) == {"Reviews"}  # Notes' test file has an empty label column
    assert set(metrics["test"]["Reviews"]) == {"accuracy", "f1"}
    acc, f1 = _accuracy_and_f1(MTModel.from_pretrained(run.model), run.root / "Reviews" / "test.csv")
    assert metrics["test"]["Reviews"]["accuracy"] == pytest.approx(acc, abs=1e-3)
    assert metrics["test"]["Reviews"]["f1"] == pytest.approx(f1, abs=1e-3)
    assert (metrics["test"]["Reviews"]["accuracy"] * N_TEST / 100) == pytest.approx(round(acc * N_TEST / 100), abs=1e-3)
    dev_acc, _ = _accuracy_and_f1(MTModel.from_pretrained(run.model), run.root / "Reviews" / "dev.csv")
    assert metrics["Reviews"]["accuracy"] == pytest.approx(dev_acc, abs=1e-3)  # dev entries as before
    assert json.loads((run.out / "seed-0" / "metrics.json").read_text()) == metrics  # one seed: the mean is that seed's


@pytest.mark.integration
def test_metrics_md_lists_test_rows_apart_and_averages_dev_only(run):
    metrics = json.loads((run.out / "metrics.json").read_text())
    md = (run.out / "metrics.md").read_text()
    dev_part, test_part = md.split("| task | metric | test (labelled test file) |")
    dev = {k: v for k, v in metrics.items() if k != "test"}
    assert f"| **average** | | **{glue_score(dev):.2f}** |" in dev_part
    assert f"| Reviews | accuracy | {metrics['Reviews']['accuracy']:.2f} |" in dev_part
    for m, v in metrics["test"]["Reviews"].items():
        assert f"| Reviews | {m} | {v:.2f} |" in test_part
    assert "Notes" not in test_part


@pytest.mark.integration
def test_unlabelled_and_absent_test_files_are_listed_not_scored(run):
    assert "test splits without labels, not scored (unlabelled): Notes/test" in run.log
    assert "test files not found, not scored: Reviews/test_extra" in run.log
    spec = task_from_dict("Notes", TASKS["Notes"])
    assert read_split(spec, "test", run.root).labels is None
    assert read_split(spec, "dev", run.root).labels is not None


def test_a_test_file_labelled_on_some_rows_only_is_refused(tmp_path):
    spec = task_from_dict("Notes", {**TASKS["Notes"], "splits": {"test": "t.tsv"}})
    (tmp_path / "t.tsv").write_text("id\ttext\tlabel\na\tgood\tpos\nb\tbad\t\nc\tfine\tpos\n")
    with pytest.raises(DataError, match=r"t.tsv, line 3, field 'label': empty label on 1 of 3 rows"):
        read_split(spec, "test", tmp_path)
    spec = task_from_dict("Notes", {**TASKS["Notes"], "splits": {"dev": "t.tsv"}})
    with pytest.raises(DataError, match="unknown label ''"):  # a dev file is labelled on every row
        read_split(spec, "dev", tmp_path)


@pytest.mark.integration
def test_no_glue_task_no_submission_zip_and_no_leaderboard_warning(run):
    assert not (run.out / "submission.zip").exists() and not (run.out / "seed-0" / "submission.zip").exists()
    assert "submission.zip lacks" not in run.log and "MISSING" not in run.log
    for task, n in (("Reviews", N_TEST), ("Notes", N_TEST)):
        rows = list(csv.DictReader((run.out / "predictions" / f"{task}.tsv").open(), delimiter="\t"))
        assert [r["index"] for r in rows] == [f"test{i}" for i in range(n)]
        assert {r["prediction"] for r in rows} <= {"neg", "pos"}
    assert sorted(p.name for p in (run.out / "seed-0" / "predictions").iterdir()) == ["Notes.tsv", "Reviews.tsv"]


@pytest.mark.integration
def test_evaluate_split_test_scores_the_labelled_test_files(run, capsys):
    ev = run.base / "ev-test"
    assert main(["evaluate", str(run.cfg), "--model", str(run.model), "--output-dir", str(ev), "--split", "test"]) == 0
    capsys.readouterr()
    metrics = json.loads((run.out / "metrics.json").read_text())
    assert json.loads((ev / "metrics.json").read_text()) == {"test": metrics["test"]}
    assert (
        "| Reviews | accuracy |" in (ev / "metrics.md").read_text() and "average" not in (ev / "metrics.md").read_text()
    )
    dev = run.base / "ev-dev"
    assert main(["evaluate", str(run.cfg), "--model", str(run.model), "--output-dir", str(dev)]) == 0  # default: dev
    assert json.loads((dev / "metrics.json").read_text()) == {k: v for k, v in metrics.items() if k != "test"}
    assert (
        main(["evaluate", str(run.cfg), "--model", str(run.model), "--output-dir", str(dev), "--split", "heldout"]) == 2
    )
    err = capsys.readouterr().err
    assert "--split 'heldout': expected the start of a dev or test split name" in err and "'test_extra'" in err


@pytest.mark.integration
def test_dev_and_test_evaluations_into_one_folder_keep_each_other(run, capsys, caplog):
    """`evaluate` then `evaluate --split test` into one folder: metrics.json holds both; the
    same with another model drops the other model's section (with a warning) instead of mixing."""
    metrics = json.loads((run.out / "metrics.json").read_text())
    ev = run.base / "ev-both"
    assert main(["evaluate", str(run.cfg), "--model", str(run.model), "--output-dir", str(ev)]) == 0
    assert main(["evaluate", str(run.cfg), "--model", str(run.model), "--output-dir", str(ev), "--split", "test"]) == 0
    assert json.loads((ev / "metrics.json").read_text()) == metrics
    assert (ev / "predictions.npz").is_file()
    assert main(["evaluate", str(run.cfg), "--model", str(run.model), "--output-dir", str(ev)]) == 0  # dev again
    assert json.loads((ev / "metrics.json").read_text()) == metrics
    caplog.set_level(logging.WARNING, logger="mtkd")  # as if the dev results had come from another model:
    (ev / "metrics_sources.json").write_text(
        json.dumps(
            {**json.loads((ev / "metrics_sources.json").read_text()), "dev": {"Reviews": "0" * 64, "Notes": "0" * 64}}
        )
    )
    assert main(["evaluate", str(run.cfg), "--model", str(run.model), "--output-dir", str(ev), "--split", "test"]) == 0
    assert json.loads((ev / "metrics.json").read_text()) == {"test": metrics["test"]}
    assert not (ev / "predictions.npz").exists()
    assert "dropping the earlier dev results (they came from other models)" in caplog.text
    capsys.readouterr()


@pytest.mark.integration
def test_evaluate_a_test_prefix_with_nothing_labelled_is_refused(run, capsys):
    ev = run.base / "ev-unlabelled"
    assert (
        main(["evaluate", str(run.cfg), "--model", str(run.model), "--output-dir", str(ev), "--split", "test_extra"])
        == 2
    )
    err = capsys.readouterr().err
    assert "--split 'test_extra': no labelled split to score; file not found: Reviews/test_extra" in err
    assert not (ev / "metrics.json").exists()


@pytest.mark.integration
def test_evaluate_with_a_config_listing_a_subset_of_the_models_tasks(run, tmp_path, caplog):
    """Item 4: the model has Reviews and Notes heads; a config with Reviews alone evaluates it and
    logs the head it leaves out."""
    raw = {**run.raw, "tasks": {"Reviews": {}}}
    path = tmp_path / "subset.yaml"
    path.write_text(yaml.safe_dump(raw))
    caplog.set_level("INFO")
    assert main(["evaluate", str(path), "--model", str(run.model), "--output-dir", str(tmp_path / "ev")]) == 0
    assert "heads not loaded (not asked for): Notes" in caplog.text
    got = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert got == {"Reviews": json.loads((run.out / "metrics.json").read_text())["Reviews"]}
