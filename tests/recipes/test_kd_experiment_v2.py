"""The decisive KD experiment's machinery (issue 16), on a tiny encoder:

- the teachers' own budget (kd.teacher_mtl / kd.teacher_finetune) is validated like `mtl`, follows
  the teachers' identity, and retrains the teachers (and students) only, never MT-DNN;
- kd.unlabeled {from_train: true, cap: N}: the task's training rows its train_cap leaves unused, so
  no example is both labelled and unlabeled;
- with kd.unlabeled the experiment trains two students from the same teachers: the paper's
  MT-DNN-KD (no unlabeled text) and "MT-DNN-KD + unlabeled text", each its own row;
- the paper's student trains on MT-DNN's batches in MT-DNN's order;
- every evaluation keeps its per-example dev predictions, and results.json/.md hold the paired
  bootstrap intervals computed from them, also when `mtkd combine` merges runs.

One run is shared (module fixture): SST-2, RTE (teacher, train_cap 30 of 48 rows, 10 unused rows as
unlabeled text) and STS-B, 2 candidates with 2 MTL epochs each (MT-DNN: 1), both kept.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from conftest import tiny_config, write_glue_fixture
from mtkd import unlabeled
from mtkd.cli import main
from mtkd.config import load_config, teacher_train_config
from mtkd.errors import ConfigError
from mtkd.heads import kind_of
from mtkd.metrics import load_predictions
from mtkd.recipes.inputs import prepare_data
from mtkd.recipes.runner import Runner
from mtkd.stats import Evaluated, paired_bootstrap
from mtkd.task_data import TaskData

TASKS = ("SST-2", "RTE", "STS-B")
RTE_CAP, UNLABELED_CAP, N_TRAIN = 30, 10, 48


def _config(glue, encoder, cache, **kd) -> dict:
    cfg = tiny_config(glue, encoder, cache, tasks=TASKS, stages=["mtl", "finetune", "teach", "distill"])
    cfg["tasks"]["RTE"]["train_cap"] = RTE_CAP
    cfg["kd"] = {"teacher_tasks": ["RTE"], "select_by": ["RTE"], "candidates": [{"dropout": 0.1}, {"dropout": 0.2}],
                 "top_k": 2, "teacher_mtl": {"epochs": 2},
                 "unlabeled": {"RTE": {"from_train": True, "cap": UNLABELED_CAP}}, **kd}
    return cfg


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_encoder):
    from mtkd.recipes import pipeline

    base = tmp_path_factory.mktemp("kd-v2")
    glue = write_glue_fixture(base / "glue", n_train=N_TRAIN)
    path = base / "kd.yaml"
    path.write_text(yaml.safe_dump(_config(glue, tiny_encoder, base / "cache")))
    out = base / "out"
    planned = pipeline.plan(load_config(path), out)[1].stages.planned_keys()  # the plan, made before anything trains
    assert main(["run", str(path), "--output-dir", str(out)]) == 0
    return SimpleNamespace(base=base, glue=glue, path=path, out=out, sd=out / "seed-0", planned=planned,
                           res=json.loads((out / "results.json").read_text()))


def _steps(folder: Path) -> list[str]:
    return [json.loads(line)["task"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _done(folder: Path) -> dict:
    return json.loads((folder / "DONE.json").read_text())


# ----------------------------------------------------------------------------------- the config
def test_teacher_budget_keys_are_validated_like_the_mtl_section(tmp_path, glue_root, tiny_encoder):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_config(glue_root, tiny_encoder, tmp_path / "cache")))
    cfg = load_config(path, ["kd.teacher_finetune.lr=0.01"])
    mtl, ft = teacher_train_config(cfg, "mtl"), teacher_train_config(cfg, "finetune")
    assert mtl.epochs == 2 and cfg.mtl.epochs == 1  # on top of `mtl`; `mtl` itself unchanged
    assert {k: v for k, v in vars(mtl).items() if k != "epochs"} == {k: v for k, v in vars(cfg.mtl).items() if k != "epochs"}
    assert ft.lr == 0.01 and ft.batch_size == cfg.finetune.batch_size and cfg.finetune.lr == 1e-3
    for override, message in (
        ("kd.teacher_mtl.epoch=2", "kd.teacher_mtl: unknown key 'epoch' (did you mean 'epochs'?)"),
        ("kd.teacher_mtl.epochs=two", "kd.teacher_mtl.epochs: expected a number, got str 'two'"),
        ("kd.teacher_finetune.lr=-1", "kd.teacher_finetune.lr must be a positive number, got -1.0"),
        ("kd.teacher_mtl.sampling=temp", "kd.teacher_mtl.sampling: 'temp' is not one of"),
        ("kd.teacher_mtl=3", "kd.teacher_mtl: expected a mapping"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            load_config(path, [override])


def test_unlabeled_from_train_is_validated(tmp_path, glue_root, tiny_encoder):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_config(glue_root, tiny_encoder, tmp_path / "cache")))
    for override, message in (
        ("tasks.RTE.train_cap=null", "kd.unlabeled.RTE: from_train takes the rows of RTE's training file that "
                                     "tasks.RTE.train_cap leaves unused, but RTE has no train_cap"),
        ("kd.unlabeled.RTE.cpa=3", r"kd.unlabeled.RTE \(from_train\): unknown key 'cpa' \(did you mean 'cap'\?\)"),
        ("kd.unlabeled.RTE.cap=0", "kd.unlabeled.RTE.cap must be a positive integer"),
        ("kd.unlabeled.RTE.from_train=false", "kd.unlabeled.RTE.from_train must be true"),
    ):
        with pytest.raises(ConfigError, match=message):
            load_config(path, [override])
    # the older form, a file of extra text, still loads (it now trains the extra row, see docs/distillation.md)
    old = load_config(path, ["kd.unlabeled.RTE={path: x.tsv, fields: {text_a: a}}"])
    assert TaskData(old).specs["RTE+unlabeled"].splits["train"].path == "x.tsv"
    assert unlabeled.from_train(old, "RTE+unlabeled") is None


def test_from_train_takes_exactly_the_unused_training_rows(tmp_path, glue_root, tiny_encoder):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_config(glue_root, tiny_encoder, tmp_path / "cache")))
    data = TaskData(load_config(path, ["kd.unlabeled.RTE.cap=null"]))
    labelled, text = data.train_set("RTE"), data.train_set("RTE+unlabeled")
    assert text.data.labels is None and text.data.ids == labelled.data.ids  # the same file, no labels
    assert len(labelled.indices) == RTE_CAP and len(text.indices) == N_TRAIN - RTE_CAP  # cap null: every unused row
    assert sorted(set(labelled.indices) | set(text.indices)) == list(range(N_TRAIN))
    assert not set(labelled.indices) & set(text.indices)
    capped = TaskData(load_config(path)).train_set("RTE+unlabeled")
    assert len(capped.indices) == UNLABELED_CAP and set(capped.indices) <= set(text.indices)
    ident = TaskData(load_config(path)).data_identity("RTE+unlabeled", "train")
    assert ident["cap"] == UNLABELED_CAP and ident["from_train"] == {"task": "RTE", "train_cap": RTE_CAP}
    with pytest.raises(ConfigError, match="keeps all 48 rows .*no row is left unused"):
        TaskData(load_config(path, [f"tasks.RTE.train_cap={N_TRAIN}"])).train_set("RTE+unlabeled")


def test_from_train_with_no_row_left_is_refused_before_training(tmp_path, glue_root, tiny_encoder, capsys):
    """check-config --data and run's data preparation refuse it, with the message train_set gives."""
    from mtkd.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(_config(glue_root, tiny_encoder, tmp_path / "cache")))
    over = ["--set", f"tasks.RTE.train_cap={N_TRAIN + 5}"]
    assert main(["check-config", str(path), *over]) == 0  # rows not read: cannot tell
    capsys.readouterr()
    assert main(["check-config", str(path), "--data", *over]) == 2
    assert f"keeps all {N_TRAIN} rows" in capsys.readouterr().err
    cfg = load_config(path, over[1:])
    with pytest.raises(ConfigError, match=f"keeps all {N_TRAIN} rows .*no row is left unused"):
        prepare_data(cfg, TaskData(cfg), Runner(cfg, tmp_path / "o").accelerator)


# ------------------------------------------------------------------------------ the experiment
def test_the_plan_keys_every_stage_as_the_run_stores_it(run):
    trained = {p.parent: _done(p.parent)["stage_key"] for p in run.out.rglob("DONE.json") if (p.parent / "model").is_dir()}
    assert len(trained) >= 14  # mtl, 3 finetunes, 2 candidates, 2 member finetunes, 2 students x (mtl + 3 finetunes)
    for folder, key in trained.items():
        assert run.planned[str((folder / "model").resolve())] == key, folder
    assert run.planned[str((run.sd / "teach" / "soft_targets").resolve())] == _done(run.sd / "teach")["stage_key"]
    assert run.planned[str((run.sd / "teach" / "unlabeled" / "soft_targets").resolve())] == \
        _done(run.sd / "teach" / "unlabeled")["stage_key"]


def test_two_students_from_the_same_teachers_the_paper_row_without_the_unlabeled_text(run):
    res, sd = run.res, run.sd
    assert set(res["systems"]) == {"mtdnn", "ensemble", "mtdnn_kd", "mtdnn_kd_unlabeled"}
    assert set(res["systems"]["mtdnn_kd_unlabeled"]) == set(TASKS)
    md = (run.out / "results.md").read_text()
    assert "| MT-DNN-KD |" in md and "| MT-DNN-KD + unlabeled text |" in md
    assert "MT-DNN-KD + unlabeled text better than MT-DNN on" in md
    assert set(res["comparison"]["kd_unlabeled_minus_mtdnn"]) == set(TASKS)
    assert "RTE+unlabeled" not in _steps(sd / "distill" / "mtl")  # the paper's student: no unlabeled text
    assert _steps(sd / "distill_unlabeled" / "mtl").count("RTE+unlabeled") == -(-UNLABELED_CAP // 8)  # batch 8
    paper, extra = _done(sd / "distill" / "mtl")["identity"]["loss"], _done(sd / "distill_unlabeled" / "mtl")["identity"]["loss"]
    assert paper["teachers"] == extra["teachers"] == _done(sd / "teach")["stage_key"]  # the same teachers
    assert paper["soft_tasks"] == ["RTE"] and "unlabeled_targets" not in paper
    assert extra["soft_tasks"] == ["RTE", "RTE+unlabeled"]
    assert extra["unlabeled_targets"] == _done(sd / "teach" / "unlabeled")["stage_key"]
    assert "seed-0/distill_unlabeled" in res["timings"]


def test_the_teachers_label_only_unused_rows(run):
    data = TaskData(load_config(run.path))
    labelled = {data.train_set("RTE").data.ids[i] for i in data.train_set("RTE").indices}
    soft = json.loads((run.sd / "teach" / "soft_targets" / "RTE.json").read_text())
    extra = json.loads((run.sd / "teach" / "unlabeled" / "soft_targets" / "RTE+unlabeled.json").read_text())
    assert set(soft["ids"]) == labelled and len(extra["ids"]) == UNLABELED_CAP
    assert not set(extra["ids"]) & labelled  # no example is both labelled and unlabeled
    assert set(extra["ids"]) <= set(data.train_set("RTE").data.ids)
    assert extra["provenance"]["teacher_key"] == _done(run.sd / "teach")["stage_key"]
    assert len(extra["provenance"]["members"]) == 2


def test_mtdnn_and_the_paper_student_see_the_same_batches_in_the_same_order(run):
    from mtkd.loop import make_sampler
    from mtkd.recipes.distill import student_tasks

    mtdnn, student = _steps(run.sd / "mtl"), _steps(run.sd / "distill" / "mtl")
    assert mtdnn == student and len(set(mtdnn)) == len(TASKS)  # the logged task of every update
    for t in TASKS:
        assert _steps(run.sd / "finetune" / t) == _steps(run.sd / "distill" / "finetune" / t)
    # the batch plans themselves: same tasks, same examples per batch, same order
    cfg = load_config(run.path)
    data = TaskData(cfg)
    assert student_tasks(cfg, data, with_text=False) == data.train_tasks()

    def plan(tasks):
        sampler = make_sampler({t: data.train_set(t) for t in tasks}, cfg.mtl, 0)
        return [(t, b.tolist()) for t, b in sampler.epoch_batches(0)]

    assert plan(data.train_tasks()) == plan(student_tasks(cfg, data, with_text=False))
    assert plan(student_tasks(cfg, data, with_text=True)) != plan(data.train_tasks())  # the extra row adds batches


def test_every_evaluation_keeps_its_per_example_predictions(run):
    data = TaskData(load_config(run.path))
    for system in ("mtdnn", "mtdnn_kd", "mtdnn_kd_unlabeled", "ensemble"):
        preds = load_predictions(run.sd / "eval" / system / "predictions.npz")
        expected = run.res["per_seed"][system]["0"]
        assert set(preds) == set(expected), system
        for report, p in preds.items():
            task = report  # one dev split per task here
            split, idx = data.dev_sets(task)[report]
            assert p["ids"].tolist() == [split.ids[i] for i in idx]
            assert np.array_equal(p["labels"], split.labels[idx])
            # the saved predictions give the reported metrics exactly
            assert kind_of(data.specs[task]).scores(p["labels"], p["predictions"]) == expected[report], (system, report)
    assert set(load_predictions(run.sd / "eval" / "ensemble" / "predictions.npz")) == {"RTE"}  # teacher tasks
    assert (run.sd / "teach" / "ensemble_predictions.npz").is_file()


def test_results_hold_the_paired_intervals_computed_from_the_predictions(run):
    iv = run.res["intervals"]
    assert iv["baseline"] == "mtdnn" and iv["replicates"] == 1000 and iv["bootstrap_seed"] == 0 and iv["seeds"] == [0]
    assert set(iv["comparisons"]) == {"mtdnn_kd", "mtdnn_kd_unlabeled", "ensemble"}
    assert set(iv["comparisons"]["mtdnn_kd"]["tasks"]) == set(TASKS)
    assert set(iv["comparisons"]["ensemble"]["tasks"]) == {"RTE"}  # the ensemble: teacher tasks only
    data = TaskData(load_config(run.path))

    def evaluated(system):
        return [{r: Evaluated(p["labels"], p["predictions"]) for r, p in
                 load_predictions(run.sd / "eval" / system / "predictions.npz").items()}]

    base = evaluated("mtdnn")
    order = list(run.res["report_layout"])  # the tasks in the order the run drew their rows
    again = paired_bootstrap({t: data.specs[t] for t in order}, base, evaluated("mtdnn_kd"), replicates=1000, seed=0)
    kd = iv["comparisons"]["mtdnn_kd"]
    assert kd["tasks"] == again["tasks"] and kd["mean"] == again["mean"]  # recomputed from the files: the same
    comp = run.res["comparison"]["kd_minus_mtdnn"]
    for t, r in kd["tasks"].items():
        assert r["diff"] == pytest.approx(comp[t], abs=1e-3) and r["low"] <= r["diff"] <= r["high"]
    assert kd["mean_above_zero"] == (kd["mean"]["low"] > 0)
    md = (run.out / "results.md").read_text()
    assert "| MT-DNN-KD − MT-DNN | MT-DNN-KD + unlabeled text − MT-DNN | MT-DNN ensemble (teachers) − MT-DNN |" in md
    r = kd["tasks"]["RTE"]
    assert f"| RTE | {r['diff']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}] |" in md
    assert "MT-DNN-KD − MT-DNN on the mean over 3 tasks:" in md and "Method: paired percentile bootstrap" in md
    png = run.out / "charts" / "paired_differences.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # the issue's targets, each met or not
    names = [t["target"] for t in run.res["targets"]]
    assert len(names) == 5 and names[0].startswith("ensemble − MT-DNN ≥ 1.5 points")
    assert all(t["met"] in (True, False) for t in run.res["targets"])
    assert "Targets of the decisive KD experiment:" in md


def test_combine_finds_each_seeds_predictions_in_the_run_folders(run, tmp_path):
    # a second "seed" made from the first run's files (seed 1), and a run folder without predictions (seed 2)
    res = run.res
    for seed, with_predictions in ((1, True), (2, False)):
        folder = tmp_path / f"run-{seed}"
        if with_predictions:
            shutil.copytree(run.sd / "eval", folder / f"seed-{seed}" / "eval")
        copy = json.loads(json.dumps(res))
        copy["seeds"], copy["config"]["seeds"] = [seed], [seed]
        copy["per_seed"] = {s: {str(seed): v["0"]} for s, v in res["per_seed"].items()}
        copy["timings"] = {}
        folder.mkdir(exist_ok=True)
        (folder / "results.json").write_text(json.dumps(copy))
    out = tmp_path / "both"
    assert main(["combine", str(run.out), str(tmp_path / "run-1"), "--output-dir", str(out)]) == 0
    both = json.loads((out / "results.json").read_text())
    kd = both["intervals"]["comparisons"]["mtdnn_kd"]
    one = res["intervals"]["comparisons"]["mtdnn_kd"]
    assert both["intervals"]["seeds"] == [0, 1] and kd["tasks"]["RTE"]["per_seed"] == one["tasks"]["RTE"]["per_seed"] * 2
    assert kd["mean"]["diff"] == pytest.approx(one["mean"]["diff"], abs=1e-4)
    assert (out / "charts" / "paired_differences.png").is_file()
    # predictions missing for a seed: the report says so, without intervals
    out2 = tmp_path / "missing"
    assert main(["combine", str(run.out), str(tmp_path / "run-2"), "--output-dir", str(out2)]) == 0
    missing = json.loads((out2 / "results.json").read_text())
    assert "intervals" not in missing
    assert str(tmp_path / "run-2" / "seed-2" / "eval" / "mtdnn" / "predictions.npz") in missing["intervals_note"]
    md = (out2 / "results.md").read_text()
    assert "Intervals not computed: no per-example dev predictions of MT-DNN" in md
    assert not (out2 / "charts" / "paired_differences.png").exists()
    wins = [t for t in missing["targets"] if "tasks_better" in t["value"]]
    assert wins and all(t["value"]["mean_interval"] is None and t["met"] in (None, False) for t in wins)


def test_teacher_levers_and_unlabeled_text_retrain_only_what_reads_them(run, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(run.out, out)
    weights = {p: p.read_bytes() for p in out.rglob("model.safetensors")}

    def changed():
        now = {p for p in weights if p.read_bytes() != weights[p]}
        weights.update({p: p.read_bytes() for p in now})
        return {str(p.relative_to(out / "seed-0")).split("/")[0] + "/" + str(p.relative_to(out / "seed-0")).split("/")[1]
                for p in now}

    # more (or less) unlabeled text: relabelled and the extra row retrained; the teachers and the
    # paper's student are reused
    teach_key = _done(out / "seed-0" / "teach")["stage_key"]
    assert main(["run", str(run.path), "--output-dir", str(out), "--set", "kd.unlabeled.RTE.cap=5"]) == 0
    assert changed() == {"distill_unlabeled/mtl", "distill_unlabeled/finetune"}
    assert _done(out / "seed-0" / "teach")["stage_key"] == teach_key
    assert _done(out / "seed-0" / "teach" / "unlabeled")["examples"] == {"RTE+unlabeled": 5}
    # the teachers' MTL budget: the candidates, the members and both students retrain; MT-DNN does not
    assert main(["run", str(run.path), "--output-dir", str(out), "--set", "kd.unlabeled.RTE.cap=5",
                 "--set", "kd.teacher_mtl.epochs=1"]) == 0
    assert changed() == {"teach/candidate-0", "teach/candidate-1", "distill/mtl", "distill/finetune",
                         "distill_unlabeled/mtl", "distill_unlabeled/finetune"}
    assert _done(out / "seed-0" / "teach" / "candidate-0" / "mtl")["identity"]["train"]["epochs"] == 1
    assert _done(out / "seed-0" / "mtl")["identity"]["train"]["epochs"] == 1  # MT-DNN: `mtl`, untouched
    assert _done(out / "seed-0" / "teach")["stage_key"] != teach_key


# ------------------------------------------------------------------------------ targets, by hand
def test_targets_from_known_numbers():
    from mtkd.report import targets

    tasks = [f"T{i}" for i in range(8)]
    mt = {t: {"accuracy": 70.0} for t in tasks}
    kd = {t: {"accuracy": 71.0 if i < 6 else 69.0} for i, t in enumerate(tasks)}
    ens = {t: {"accuracy": 72.0} for t in tasks[:4]}
    res = {"per_seed": {"mtdnn": {"1": mt, "2": mt}, "ensemble": {"1": ens, "2": {t: {"accuracy": 71.0} for t in tasks[:4]}},
                       "mtdnn_kd": {"1": kd, "2": kd}},
           "report_layout": {t: {"reports": [t], "beside": []} for t in tasks},
           "comparison": {"kd_beats_mtdnn": {"tasks": tasks[:6], "of": 8, "mean_diff": 0.5},
                          "kd_minus_mtdnn": {t: (1.0 if i < 6 else -1.0) for i, t in enumerate(tasks)},
                          "ensemble_minus_mtdnn": {t: 1.5 for t in tasks[:4]}},
           "intervals": {"comparisons": {"mtdnn_kd": {"mean": {"diff": 0.5, "low": 0.1, "high": 0.9}}}}}
    gain, wins, kept = targets(res, tasks[:4])
    assert gain["value"]["per_seed"] == {"1": 2.0, "2": 1.0} and gain["met"] is False  # seed 2 below 1.5
    assert wins["target"].startswith("MT-DNN-KD beats MT-DNN on ≥ 6 of 8 tasks") and wins["met"] is True
    assert kept["value"] == {"student_gain": 1.0, "ensemble_gain": 1.5, "kept": round(1 / 1.5, 4)} and kept["met"] is True
    res["intervals"]["comparisons"]["mtdnn_kd"]["mean"]["low"] = -0.1
    assert targets(res, tasks[:4])[1]["met"] is False  # the mean's interval reaches 0
    del res["intervals"]
    assert targets(res, tasks[:4])[1]["met"] is None  # not measured without intervals
    res["comparison"]["kd_beats_mtdnn"]["tasks"] = tasks[:5]
    assert targets(res, tasks[:4])[1]["met"] is False  # 5 of 8: not met, intervals or not
