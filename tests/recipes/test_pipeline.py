"""`mtkd run CONFIG --output-dir DIR` end to end through the CLI on a tiny config: SST-2, MRPC
(two metrics, a train cap), STS-B (regression), MNLI from the JSON sample (reported as 'MNLI') and
AX (no training data, predicted with the MNLI head). Then the other commands on its outputs:
`mtkd predict`, `mtkd check-config`, and a fine-tune from a model of another task set."""

from __future__ import annotations

import csv
import io
import json
import os
import signal
import time
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from conftest import tiny_config, write_glue_fixture
from mtkd import loop
from mtkd.cli import main
from mtkd.config import load_config, to_dict
from mtkd.errors import CheckpointError
from mtkd.loop import TrainingInterrupted
from mtkd.metrics import glue_score
from mtkd.model import MTModel, weights_sha256
from mtkd.recipes import finetune
from mtkd.recipes.runner import Runner
from mtkd.task_data import TaskData

TASKS = ("SST-2", "MRPC", "STS-B", "MNLI", "AX")
N_DEV, N_TEST = 16, 12
MNLI_LABELS = {"contradiction", "entailment", "neutral"}


def _tsv(text: str) -> list[dict]:
    return list(csv.DictReader(io.StringIO(text), delimiter="\t", quoting=csv.QUOTE_NONE))


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_encoder):
    base = tmp_path_factory.mktemp("pipeline")
    glue = write_glue_fixture(base / "glue", n_dev=N_DEV, n_test=N_TEST)
    raw = tiny_config(glue, tiny_encoder, base / "cache", tasks=TASKS)
    raw["tasks"]["MRPC"] = {"train_cap": 40}
    cfg = base / "config.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out = base / "out"
    assert main(["run", str(cfg), "--output-dir", str(out)]) == 0
    seed = out / "seed-0"
    return SimpleNamespace(base=base, glue=glue, raw=raw, cfg=cfg, out=out, seed=seed,
                           metrics=(out / "metrics.json").read_text(),
                           trained=_files(seed / "mtl") | {f"finetune/{k}": v for k, v in _files(seed / "finetune").items()})


def test_metrics_json_has_every_task_with_a_dev_set(run):
    metrics = json.loads(run.metrics)
    assert set(metrics) == {"SST-2", "MRPC", "STS-B", "MNLI"}  # AX has no dev set; MNLI as 'MNLI', not MNLI-m
    assert {t: set(m) for t, m in metrics.items()} == {
        "SST-2": {"accuracy"}, "MRPC": {"accuracy", "f1"}, "STS-B": {"pearson", "spearman"}, "MNLI": {"accuracy"}}
    for task, ms in metrics.items():
        for name, v in ms.items():
            assert -100 <= v <= 100, (task, name, v)
    for task in ("SST-2", "MRPC", "MNLI"):  # accuracies over 16 dev examples: multiples of 100/16
        assert metrics[task]["accuracy"] * N_DEV / 100 == pytest.approx(round(metrics[task]["accuracy"] * N_DEV / 100), abs=1e-3)
    assert json.loads((run.seed / "metrics.json").read_text()) == metrics  # one seed: the mean is that seed's


def test_dev_accuracy_is_that_of_the_fine_tuned_model(run):
    """Recompute SST-2 dev accuracy independently: the fine-tuned SST-2 model on the raw dev file."""
    rows = _tsv((run.glue / "SST-2" / "dev.tsv").read_text())
    model = MTModel.from_pretrained(run.seed / "finetune" / "SST-2" / "model")
    preds = model.predict("SST-2", [r["sentence"] for r in rows])
    acc = 100 * np.mean([p == r["label"] for p, r in zip(preds, rows)])
    assert json.loads(run.metrics)["SST-2"]["accuracy"] == pytest.approx(acc, abs=1e-3)


def test_metrics_md_lists_every_value_and_the_glue_average(run):
    md = (run.out / "metrics.md").read_text()
    metrics = json.loads(run.metrics)
    for task, ms in metrics.items():
        for name, v in ms.items():
            assert f"| {task} | {name} | {v:.2f} |" in md
    assert f"| **average** | | **{glue_score(metrics):.2f}** |" in md


def test_config_yaml_is_the_resolved_config(run):
    saved = load_config(run.out / "config.yaml")
    assert to_dict(saved) == to_dict(load_config(run.cfg))
    assert saved.mtl.batch_size == 8 and saved.data.max_seq_len == 32 and saved.tasks["MRPC"].train_cap == 40
    assert [s.value for s in saved.stages] == ["mtl", "finetune", "evaluate", "predict"]


def test_data_report(run):
    rep = json.loads((run.out / "data_report.json").read_text())
    assert set(rep) == set(TASKS)
    assert rep["MRPC"]["train"]["examples"] == 48 and rep["MRPC"]["train"]["used"] == 40  # train_cap
    assert rep["SST-2"]["train"] == {"file": str(run.glue / "SST-2" / "train.tsv"), "examples": 48, "used": 48,
                                     "truncated": 0, "skipped_rows": 0}
    assert rep["MNLI"]["dev_matched"]["examples"] == N_DEV
    assert rep["AX"] == {"test": {"file": str(run.glue / "diagnostic" / "diagnostic.tsv"), "examples": N_TEST,
                                  "used": N_TEST, "truncated": 0, "skipped_rows": 0}}
    done = json.loads((run.seed / "mtl" / "DONE.json").read_text())
    assert done["train_examples"] == {"SST-2": 48, "MRPC": 40, "STS-B": 48, "MNLI": 48}
    assert done["steps"] == 6 + 5 + 6 + 6  # one epoch of batches of 8


def test_submission_zip(run):
    with zipfile.ZipFile(run.out / "submission.zip") as z:
        names = set(z.namelist())
        files = {n: z.read(n).decode() for n in names}
    assert names == {"SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "AX.tsv", "MISSING.txt"}
    for name in ("SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "AX.tsv"):
        assert files[name].startswith("index\tprediction\n")
        rows = _tsv(files[name])
        assert [r["index"] for r in rows] == [str(i) for i in range(N_TEST)], name
    assert {r["prediction"] for r in _tsv(files["SST-2.tsv"])} <= {"0", "1"}
    assert {r["prediction"] for r in _tsv(files["MRPC.tsv"])} <= {"0", "1"}
    for r in _tsv(files["STS-B.tsv"]):
        assert 0.0 <= float(r["prediction"]) <= 5.0 and len(r["prediction"].split(".")[1]) == 3
    ax = [r["prediction"] for r in _tsv(files["AX.tsv"])]
    assert set(ax) <= MNLI_LABELS
    # AX is predicted by the fine-tuned MNLI model
    diag = _tsv((run.glue / "diagnostic" / "diagnostic.tsv").read_text())
    mnli = MTModel.from_pretrained(run.seed / "finetune" / "MNLI" / "model")
    assert ax == mnli.predict("MNLI", [r["sentence1"] for r in diag], [r["sentence2"] for r in diag])
    missing = files["MISSING.txt"]
    for absent in ("CoLA.tsv", "QQP.tsv", "MNLI-m.tsv", "MNLI-mm.tsv", "QNLI.tsv", "RTE.tsv", "WNLI.tsv"):
        assert absent in missing
    for present in ("SST-2.tsv", "MRPC.tsv", "STS-B.tsv", "AX.tsv"):
        assert present not in missing
    assert (run.out / "submission.zip").read_bytes() == (run.seed / "submission.zip").read_bytes()


def test_finished_stages_leave_no_resume_state(run):
    for stage in [run.seed / "mtl"] + [run.seed / "finetune" / t for t in ("SST-2", "MRPC", "STS-B", "MNLI")]:
        assert (stage / "DONE.json").is_file() and (stage / "model" / "model.safetensors").is_file()
        assert not (stage / "checkpoints").exists()
    assert not (run.seed / "finetune" / "AX").exists()  # nothing to train


def test_rerun_reuses_finished_stages(run, capsys):
    assert main(["run", str(run.cfg), "--output-dir", str(run.out)]) == 0
    after = _files(run.seed / "mtl") | {f"finetune/{k}": v for k, v in _files(run.seed / "finetune").items()}
    assert after == run.trained  # no model, log or DONE.json rewritten, nothing added
    assert (run.out / "metrics.json").read_text() == run.metrics
    assert "mtl:" not in capsys.readouterr().err  # no training progress bar


def test_predict_command(run, capsys):
    ft = run.seed / "finetune" / "SST-2" / "model"
    texts = ["the film was great .", "the plot was awful ."]
    assert main(["predict", "--model", str(ft), "--task", "SST-2", "--text", texts[0], "--text", texts[1]]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out == {"SST-2": MTModel.from_pretrained(ft).predict("SST-2", texts)}
    assert set(out["SST-2"]) <= {"0", "1"}
    # the MTL model serves several heads at once, pairs included
    mtl_model = str(run.seed / "mtl" / "model")
    assert main(["predict", "--model", mtl_model, "--task", "STS-B", "--task", "MNLI", "--text", "a cat", "--pair", "a dog"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == {"STS-B", "MNLI"} and len(out["STS-B"]) == 1 and 0.0 <= out["STS-B"][0] <= 5.0
    assert out["MNLI"][0] in MNLI_LABELS
    # a task the model has no head for: a clear error, exit code 2
    assert main(["predict", "--model", str(ft), "--task", "QQP", "--text", "x"]) == 2
    assert "not a task of" in capsys.readouterr().err


def test_check_config(run, tmp_path, capsys):
    assert main(["check-config", str(run.cfg)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["mtl"]["batch_size"] == 8 and printed["tasks"]["MRPC"]["train_cap"] == 40

    bad = {**run.raw, "mtl": {**run.raw["mtl"], "batch_sise": 16}}
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(bad))
    assert main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "mtl: unknown key 'batch_sise' (did you mean 'batch_size'?)" in err

    assert main(["check-config", str(run.cfg), "--set", "seed=[1]"]) == 2
    assert "unknown key 'seed' (did you mean 'seeds'?)" in capsys.readouterr().err


def test_finetune_from_a_model_with_other_labels_for_a_task_is_refused(run, tmp_path, capsys):
    other = {**run.raw, "tasks": {"SST-2": {"labels": ["1", "0"]}}}  # the same names, another order
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(other))
    mtl_model = run.seed / "mtl" / "model"
    with pytest.raises(CheckpointError, match=r"task 'SST-2': checkpoint head is classification \['0', '1'\]"):
        cfg = load_config(path)
        Runner(cfg, tmp_path / "ft").run(finetune.jobs(cfg, TaskData(cfg), tmp_path / "ft", 0, mtl_model))
    assert main(["finetune", str(path), "--init", str(mtl_model), "--output-dir", str(tmp_path / "ft2")]) == 2
    assert "checkpoint does not match the configured tasks" in capsys.readouterr().err
    assert not list(tmp_path.rglob("model.safetensors"))  # nothing trained


def test_finetune_an_mtl_model_on_a_new_task_adds_a_head(run, tmp_path, caplog):
    """Paper Section 2.1: the MTL model fine-tuned on a task it was not trained on (RTE)."""
    new = {**run.raw, "tasks": {"SST-2": {}, "RTE": {}}}
    path = tmp_path / "new.yaml"
    path.write_text(yaml.safe_dump(new))
    mtl_model = run.seed / "mtl" / "model"
    caplog.set_level("INFO")
    assert main(["finetune", str(path), "--init", str(mtl_model), "--output-dir", str(tmp_path / "ft")]) == 0
    assert "new heads for RTE" in caplog.text
    rte = tmp_path / "ft" / "RTE" / "model"
    saved = json.loads((rte / "config.json").read_text())["tasks"]
    assert set(saved) == {"SST-2", "RTE"}  # the config's tasks; the MTL model's other heads left out
    from safetensors.torch import load_file

    assert "heads.RTE.out.weight" in load_file(str(rte / "model.safetensors"))
    init = json.loads((tmp_path / "ft" / "RTE" / "DONE.json").read_text())["identity"]["init"]
    assert init == {"weights": weights_sha256(mtl_model)}  # started from the MTL model's weights
    assert main(["evaluate", str(path), "--model", str(rte), "--output-dir", str(tmp_path / "ev")]) == 0
    scores = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert set(scores) == {"SST-2", "RTE"} and 0 <= scores["RTE"]["accuracy"] <= 100
    # a subset of an MTL model's heads
    sub = MTModel.from_pretrained(mtl_model, tasks=["SST-2"])
    assert set(sub.heads) == {"SST-2"} and sub.predict("SST-2", ["a fine film"])[0] in ("0", "1")
    with pytest.raises(CheckpointError, match="no head for 'RTE'"):
        MTModel.from_pretrained(mtl_model, tasks=["RTE"])


def test_a_missing_test_file_is_reported_and_the_rest_is_predicted(tiny_encoder, tmp_path):
    glue = write_glue_fixture(tmp_path / "glue")
    (glue / "SST-2" / "test.tsv").unlink()
    raw = tiny_config(glue, tiny_encoder, tmp_path / "cache", tasks=("SST-2", "MRPC"), stages=["mtl", "predict"])
    raw["mtl"]["max_steps"] = 2
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main(["run", str(path), "--output-dir", str(out)]) == 0
    report = json.loads((out / "data_report.json").read_text())
    assert "file not found" in report["SST-2"]["test"]["missing"] and report["MRPC"]["test"]["examples"] == 12
    with zipfile.ZipFile(out / "submission.zip") as z:
        assert "MRPC.tsv" in z.namelist() and "SST-2" in z.read("MISSING.txt").decode()
    # a malformed test file is an error, not a missing one
    (glue / "SST-2" / "test.tsv").write_text("index\tsentence\n0\tok\textra field\n")
    assert main(["run", str(path), "--output-dir", str(tmp_path / "out2")]) == 2


def test_timings_sum_the_attempts_of_a_stage_stopped_and_resumed(tiny_encoder, tmp_path, monkeypatch):
    """`mtkd run` stopped by SIGTERM part-way through MTL records the attempt's seconds under
    "interrupted"; the rerun that finishes MTL reports both attempts as the stage's time."""
    glue = write_glue_fixture(tmp_path / "glue", n_dev=8, n_test=4)
    raw = tiny_config(glue, tiny_encoder, tmp_path / "cache", tasks=("SST-2",), stages=["mtl"],
                      mtl={"checkpoint_every": 2})
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    real_step, calls = loop._optimizer_step, []

    def step_then_signal(run, loss):  # a slow step, then SIGTERM arrives during update 3
        real_step(run, loss)
        calls.append(1)
        if len(calls) == 3:
            time.sleep(0.5)
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(loop, "_optimizer_step", step_then_signal)
    with pytest.raises(TrainingInterrupted):
        main(["run", str(cfg), "--output-dir", str(out)])
    first = json.loads((out / "timings.json").read_text())
    assert "seed-0/mtl" not in first
    stopped = first["interrupted"]["seed-0/mtl"]
    assert stopped >= 0.5
    monkeypatch.setattr(loop, "_optimizer_step", real_step)
    assert main(["run", str(cfg), "--output-dir", str(out)]) == 0
    done = json.loads((out / "timings.json").read_text())
    assert "interrupted" not in done
    assert done["seed-0/mtl"] > stopped  # both attempts
    assert (out / "seed-0" / "mtl" / "DONE.json").is_file()
    assert main(["run", str(cfg), "--output-dir", str(out)]) == 0  # a skipped rerun keeps the work's time
    assert json.loads((out / "timings.json").read_text()) == done


def test_stage_timings_sum_attempts_keep_found_done_stages_and_replace_retrained_ones(tmp_path, monkeypatch):
    from mtkd.recipes import pipeline

    clock = iter([0.0, 30.0, 100.0, 110.0, 200.0, 245.0, 300.0, 301.0, 400.0, 460.0, 500.0, 507.0])
    monkeypatch.setattr(pipeline, "time", SimpleNamespace(time=lambda: next(clock)))
    path = tmp_path / "timings.json"
    t = pipeline.StageTimings(path)
    for stage, exc in (("seed-0/mtl", KeyboardInterrupt), ("seed-0/teach", RuntimeError)):  # 30 s, 10 s
        with pytest.raises(exc), t.stage(stage):
            raise exc()
    assert json.loads(path.read_text()) == {"interrupted": {"seed-0/mtl": 30.0, "seed-0/teach": 10.0}}
    with pipeline.StageTimings(path).stage("seed-0/mtl"):  # 45 s: finishes mtl, teach still interrupted
        pass
    assert json.loads(path.read_text()) == {"interrupted": {"seed-0/teach": 10.0}, "seed-0/mtl": 75.0}
    with pipeline.StageTimings(path).stage("seed-0/mtl", worked=lambda: False):  # 1 s: found done, kept
        pass
    with pipeline.StageTimings(path).stage("seed-0/teach"):  # 60 s + the 10 s attempt
        pass
    assert json.loads(path.read_text()) == {"seed-0/mtl": 75.0, "seed-0/teach": 70.0}
    with pipeline.StageTimings(path).stage("seed-0/mtl", worked=lambda: True):  # 7 s: retrained, replaced
        pass
    assert json.loads(path.read_text()) == {"seed-0/mtl": 7.0, "seed-0/teach": 70.0}
    assert not path.with_name("timings.json.tmp").exists()
    reader = pipeline.StageTimings(path, write=False)  # another rank: neither reads nor writes the file
    assert reader.times == {}
    path.write_text('{"seed-0/mtl": 7.0, ')  # a torn write from a killed run: start again, with a warning
    assert pipeline.StageTimings(path).times == {}
