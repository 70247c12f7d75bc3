"""The Table 3 experiment end to end on a tiny encoder: four systems, cached stages, smaller student."""

import json

import pytest
import yaml

from conftest import tiny_config
from mtkd.cli import main


def _kd_config(glue_root, tiny_encoder, tmp_path, **kd):
    cfg = tiny_config(glue_root, tiny_encoder, tmp_path / "cache", tasks=("SST-2", "STS-B", "RTE", "MNLI"))
    cfg["stages"] = ["single_task", "mtl", "finetune", "teach", "distill"]
    cfg["mtl"]["epochs"] = 1
    cfg["kd"] = {
        "teacher_tasks": ["RTE", "MNLI", "STS-B"],
        "select_by": ["RTE"],
        "candidates": [{"dropout": 0.1}, {"dropout": 0.2}, {"dropout": 0.3}],
        "top_k": 2,
        **kd,
    }
    path = tmp_path / "kd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.integration
def test_kd_experiment_writes_four_systems_and_reuses_stages(glue_root, tiny_encoder, tmp_path):
    path = _kd_config(glue_root, tiny_encoder, tmp_path)
    out = tmp_path / "out"
    assert main(["run", str(path), "--output-dir", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["systems"]) == {"single_task", "mtdnn", "ensemble", "mtdnn_kd"}
    for system in ("single_task", "mtdnn", "mtdnn_kd"):
        assert set(res["systems"][system]) == {"SST-2", "STS-B", "RTE", "MNLI"}
    assert set(res["systems"]["ensemble"]) == {"STS-B", "RTE", "MNLI"}  # teacher tasks only
    for metrics in res["systems"]["mtdnn_kd"].values():
        assert all(-100 <= v <= 100 for v in metrics.values())
    assert res["seeds"] == [0] and "config" in res and res["timings"]
    assert res["per_seed"]["mtdnn_kd"] == {"0": res["systems"]["mtdnn_kd"]}  # what `mtkd combine` merges
    md = (out / "results.md").read_text()
    for row in ("Single-task fine-tuning", "MT-DNN", "MT-DNN ensemble", "MT-DNN-KD"):
        assert row in md
    assert "**" in md  # best single-model number marked
    comp = res["comparison"]
    assert set(comp["kd_minus_mtdnn"]) == {"SST-2", "STS-B", "RTE", "MNLI"}
    assert comp["kd_beats_mtdnn"]["of"] == 4 and comp["kd_beats_mtdnn"]["of_without_teacher"] == 1
    assert set(comp["ensemble_minus_mtdnn"]) == {"STS-B", "RTE", "MNLI"}
    assert "The paper's Table 3 questions" in md and "MT-DNN-KD better than MT-DNN on" in md
    assert {p.name for p in (out / "charts").glob("*.png")} == {
        "SST-2.png",
        "STS-B.png",
        "RTE.png",
        "MNLI.png",
        "paired_differences.png",
    }
    assert set(res["intervals"]["comparisons"]) == {"mtdnn_kd", "ensemble"}  # no kd.unlabeled: no extra row
    # teachers: 2 of 3 candidates kept, soft targets with provenance for each teacher task
    teach = json.loads((out / "seed-0" / "teach" / "DONE.json").read_text())
    assert len(teach["members"]) == 2 and len(teach["selection_scores"]) == 3
    prov = json.loads((out / "seed-0" / "teach" / "soft_targets" / "MNLI.json").read_text())["provenance"]
    assert len(prov["members"]) == 2 and len(prov["data_fingerprint"]) == 64
    # rerun: every stage is cached, nothing retrains
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}
    assert main(["run", str(path), "--output-dir", str(out)]) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")} == stamps
    assert json.loads((out / "results.json").read_text())["systems"] == res["systems"]
    # only the student's loss weight changes: the teachers (and every other system) are reused,
    # the student alone is trained again
    assert main(["run", str(path), "--output-dir", str(out), "--set", "kd.soft_weight=0.3"]) == 0
    changed = {p for p in stamps if p.stat().st_mtime_ns != stamps[p]}
    assert changed and all("distill" in p.parts for p in changed), sorted(map(str, changed))
    assert {p for p in stamps if "distill" in p.parts} == changed
    done = json.loads((out / "seed-0" / "distill" / "mtl" / "DONE.json").read_text())
    assert done["identity"]["loss"]["soft_weight"] == 0.3


@pytest.mark.integration
def test_smaller_student_and_soft_weight(glue_root, tiny_encoder, tmp_path):
    path = _kd_config(
        glue_root,
        tiny_encoder,
        tmp_path,
        student={"name": str(tiny_encoder), "num_hidden_layers": 1},
        soft_weight=0.7,
        temperature=2.0,
    )
    cfg = yaml.safe_load(path.read_text())
    cfg["stages"] = ["teach", "distill"]
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main(["run", str(path), "--output-dir", str(out)]) == 0
    student_cfg = json.loads((out / "seed-0" / "distill" / "mtl" / "model" / "config.json").read_text())
    assert student_cfg["encoder_config"]["num_hidden_layers"] == 1
    teacher_cfg = json.loads((out / "seed-0" / "teach" / "candidate-0" / "mtl" / "model" / "config.json").read_text())
    assert teacher_cfg["encoder_config"]["num_hidden_layers"] == 2
    res = json.loads((out / "results.json").read_text())
    assert set(res["systems"]) == {"ensemble", "mtdnn_kd"}


@pytest.mark.integration
def test_unlabeled_text_gets_soft_targets_and_self_distillation(glue_root, tiny_encoder, tmp_path):
    """Beyond the paper: extra unlabeled RTE text labelled by the teacher, and a one-member teacher
    of the student's own architecture (self-distillation). The text trains a second student, the
    row "MT-DNN-KD + unlabeled text", beside the paper's student, which does not read it."""
    extra = tmp_path / "rte_unlabeled.tsv"
    extra.write_text(
        "sentence1\tsentence2\n"
        + "".join(f"premise {i}\tthe film was {'good' if i % 2 else 'bad'} .\n" for i in range(20))
    )
    path = _kd_config(
        glue_root,
        tiny_encoder,
        tmp_path,
        candidates=[{"dropout": 0.1}],
        top_k=1,
        unlabeled={"RTE": {"path": str(extra), "fields": {"text_a": "sentence1", "text_b": "sentence2"}}},
    )
    cfg = yaml.safe_load(path.read_text())
    cfg["stages"] = ["teach", "distill"]
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main(["run", str(path), "--output-dir", str(out)]) == 0
    soft = json.loads((out / "seed-0" / "teach" / "unlabeled" / "soft_targets" / "RTE+unlabeled.json").read_text())
    assert len(soft["ids"]) == 20 and soft["provenance"]["data_file"] == str(extra)
    assert not (out / "seed-0" / "teach" / "soft_targets" / "RTE+unlabeled.json").exists()
    steps = [
        json.loads(line)["task"]
        for line in (out / "seed-0" / "distill_unlabeled" / "mtl" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps.count("RTE+unlabeled") == 20 // 8 + 1  # every unlabeled example trained once (batch 8)
    student = json.loads((out / "seed-0" / "distill_unlabeled" / "mtl" / "model" / "config.json").read_text())
    assert student["tasks"]["RTE+unlabeled"]["head_of"] == "RTE"
    paper = [
        json.loads(line)["task"]
        for line in (out / "seed-0" / "distill" / "mtl" / "metrics.jsonl").read_text().splitlines()
    ]
    assert "RTE+unlabeled" not in paper  # the paper's MT-DNN-KD row is unchanged by the extra text
    res = json.loads((out / "results.json").read_text())
    assert set(res["systems"]) == {"ensemble", "mtdnn_kd", "mtdnn_kd_unlabeled"}
    assert "| MT-DNN-KD + unlabeled text |" in (out / "results.md").read_text()


def test_unlabeled_text_for_a_task_without_teacher_is_refused(glue_root, tiny_encoder, tmp_path):
    path = _kd_config(glue_root, tiny_encoder, tmp_path, unlabeled={"SST-2": {"path": "x.tsv"}})
    assert main(["run", str(path), "--output-dir", str(tmp_path / "out")]) == 2


def test_compare_answers_the_table3_questions_from_known_numbers():
    from mtkd.report import compare, results_markdown

    systems = {
        "single_task": {"SST-2": {"accuracy": 80.0}, "RTE": {"accuracy": 60.0}, "MRPC": {"accuracy": 80.0, "f1": 86.0}},
        "mtdnn": {"SST-2": {"accuracy": 82.0}, "RTE": {"accuracy": 63.0}, "MRPC": {"accuracy": 78.0, "f1": 84.0}},
        "ensemble": {"RTE": {"accuracy": 67.0}},
        "mtdnn_kd": {"SST-2": {"accuracy": 83.0}, "RTE": {"accuracy": 66.0}, "MRPC": {"accuracy": 77.0, "f1": 85.0}},
    }
    c = compare(systems, ["RTE"])
    assert c["kd_minus_mtdnn"] == {"SST-2": 1.0, "RTE": 3.0, "MRPC": 0.0}  # MRPC: mean 81 vs 81
    assert c["kd_beats_mtdnn"] == {
        "tasks": ["RTE", "SST-2"],
        "of": 3,
        "mean_diff": round(4 / 3, 4),
        "tasks_without_teacher": ["SST-2"],
        "of_without_teacher": 2,
        "mean_diff_without_teacher": 0.5,
    }
    assert c["ensemble_minus_mtdnn"] == {"RTE": 4.0} and c["ensemble_gain_kept"] == {"RTE": 0.75}
    assert c["mtdnn_minus_single_task"] == {"SST-2": 2.0, "RTE": 3.0, "MRPC": -2.0}
    assert c["mtdnn_beats_single_task"]["tasks"] == ["RTE", "SST-2"]
    assert c["ensemble_gain_too_small"] == []
    md = results_markdown({"systems": systems, "seeds": [1], "comparison": c, "notes": {"RTE": "a note"}})
    assert "MT-DNN-KD better than MT-DNN on 2 of 3 tasks (mean +1.33)" in md
    assert "RTE 75%" in md and "- RTE: a note" in md
    assert compare({"mtdnn": systems["mtdnn"]}, ["RTE"]) == {}  # nothing to compare


def test_compare_reports_no_share_of_a_tiny_ensemble_gain():
    """A 0.1-point ensemble gain would make a 0.7-point student difference '-700 %': no share then."""
    from mtkd.report import compare, results_markdown

    systems = {
        "mtdnn": {"QNLI": {"accuracy": 80.0}, "QQP": {"accuracy": 80.0}},
        "ensemble": {"QNLI": {"accuracy": 80.1}, "QQP": {"accuracy": 82.0}},
        "mtdnn_kd": {"QNLI": {"accuracy": 79.3}, "QQP": {"accuracy": 81.0}},
    }
    c = compare(systems, ["QNLI", "QQP"])
    assert c["ensemble_gain_kept"] == {"QQP": 0.5}
    assert c["ensemble_gain_too_small"] == ["QNLI"]
    md = results_markdown({"systems": systems, "seeds": [1], "comparison": c})
    assert "share of that gain the student keeps: QNLI —, QQP 50%." in md
    assert "— : ensemble gain < 0.5: share not meaningful" in md


def _results(seeds, per_seed, config_extra=None):
    """A results.json as run_experiment writes it, from {system: {seed: {task: metrics}}}."""
    from mtkd.report import aggregate

    agg = aggregate({s: [runs[str(seed)] for seed in seeds] for s, runs in per_seed.items()}, seeds)
    cfg = {"seeds": seeds, "mtl": {"lr": 2e-4}, "kd": {"teacher_tasks": ["RTE"]}, **(config_extra or {})}
    return {
        **agg,
        "per_seed": per_seed,
        "config": cfg,
        "notes": {},
        "timings": {"data": 5.0, **{f"seed-{s}/mtl": 100.0 + s for s in seeds}},
    }


def test_combine_merges_seed_runs_into_mean_and_std(tmp_path):
    a = _results(
        [42],
        {
            "mtdnn": {"42": {"RTE": {"accuracy": 60.0}, "SST-2": {"accuracy": 80.0}}},
            "ensemble": {"42": {"RTE": {"accuracy": 64.0}}},
            "mtdnn_kd": {"42": {"RTE": {"accuracy": 62.0}, "SST-2": {"accuracy": 81.0}}},
        },
    )
    del a["per_seed"]  # single-seed files written before per_seed existed still combine
    b = _results(
        [43],
        {
            "mtdnn": {"43": {"RTE": {"accuracy": 64.0}, "SST-2": {"accuracy": 82.0}}},
            "ensemble": {"43": {"RTE": {"accuracy": 66.0}}},
            "mtdnn_kd": {"43": {"RTE": {"accuracy": 66.0}, "SST-2": {"accuracy": 81.0}}},
        },
    )
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    (tmp_path / "a" / "results.json").write_text(json.dumps(a))
    (tmp_path / "b" / "results.json").write_text(json.dumps(b))
    out = tmp_path / "both"
    assert main(["combine", str(tmp_path / "a"), str(tmp_path / "b" / "results.json"), "--output-dir", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["seeds"] == [42, 43] and res["config"]["seeds"] == [42, 43]
    assert res["systems"]["mtdnn"]["RTE"] == {"accuracy": 62.0} and res["std"]["mtdnn"]["RTE"] == {"accuracy": 2.0}
    assert res["systems"]["mtdnn_kd"]["RTE"] == {"accuracy": 64.0} and res["std"]["mtdnn_kd"]["SST-2"] == {
        "accuracy": 0.0
    }
    assert res["per_seed"]["ensemble"] == {"42": {"RTE": {"accuracy": 64.0}}, "43": {"RTE": {"accuracy": 66.0}}}
    assert res["comparison"]["kd_minus_mtdnn"] == {"RTE": 2.0, "SST-2": 0.0}
    assert res["comparison"]["ensemble_gain_kept"] == {"RTE": round(2.0 / 3.0, 4)}
    assert res["timings"] == {"seed-42/mtl": 142.0, "seed-43/mtl": 143.0}
    md = (out / "results.md").read_text()
    assert "64.0 ± 2.0" in md and "seeds [42, 43]" in md
    assert {p.name for p in (out / "charts").glob("*.png")} == {"RTE.png", "SST-2.png"}


def test_combine_refuses_other_configs_repeated_seeds_and_missing_files(tmp_path, capsys):
    runs = {"mtdnn": {"1": {"RTE": {"accuracy": 60.0}}}}
    (tmp_path / "a.json").write_text(json.dumps(_results([1], runs)))
    (tmp_path / "lr.json").write_text(
        json.dumps(_results([2], {"mtdnn": {"2": {"RTE": {"accuracy": 61.0}}}}, {"mtl": {"lr": 1e-4}}))
    )
    (tmp_path / "same.json").write_text(json.dumps(_results([1], runs)))
    out = str(tmp_path / "out")
    assert main(["combine", str(tmp_path / "a.json"), str(tmp_path / "lr.json"), "--output-dir", out]) == 2
    assert "lr.json: config differs from" in capsys.readouterr().err  # names the file and the key
    assert main(["combine", str(tmp_path / "a.json"), str(tmp_path / "lr.json"), "--output-dir", out]) == 2
    assert "mtl.lr: only seeds may differ" in capsys.readouterr().err
    assert main(["combine", str(tmp_path / "a.json"), str(tmp_path / "same.json"), "--output-dir", out]) == 2
    assert "seed 1 of mtdnn is also in" in capsys.readouterr().err
    assert main(["combine", str(tmp_path / "a.json"), str(tmp_path / "nope.json"), "--output-dir", out]) == 2
    assert "nope.json: no such results file" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # nothing written on refusal


@pytest.mark.integration
def test_from_mtdnn_candidates_continue_the_seeds_mtdnn_mtl_model(glue_root, tiny_encoder, tmp_path):
    """kd.candidates [{from_mtdnn: true}]: the candidate's MTL starts from this seed's MT-DNN MTL model
    (its identity and card say so; at a near-zero teacher lr its weights stay MT-DNN's), while a
    candidate from the encoder does not; the experiment then runs through to the student."""
    from safetensors.numpy import load_file

    path = _kd_config(
        glue_root,
        tiny_encoder,
        tmp_path,
        candidates=[{"dropout": 0.1}, {"from_mtdnn": True}],
        top_k=2,
        teacher_mtl={"lr": 1.0e-12, "warmup": 0.0},
    )
    cfg = yaml.safe_load(path.read_text())
    cfg["stages"] = ["mtl", "finetune", "teach", "distill"]
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main(["run", str(path), "--output-dir", str(out)]) == 0
    seed = out / "seed-0"
    mtdnn_key = json.loads((seed / "mtl" / "DONE.json").read_text())["stage_key"]
    warm = json.loads((seed / "teach" / "candidate-1" / "mtl" / "DONE.json").read_text())
    fresh = json.loads((seed / "teach" / "candidate-0" / "mtl" / "DONE.json").read_text())
    assert warm["identity"]["init"] == {"stage": mtdnn_key} and "stage" not in fresh["identity"]["init"]
    assert warm["seed"] != json.loads((seed / "mtl" / "DONE.json").read_text())["seed"]  # its own data order
    mtdnn_w = load_file(str(seed / "mtl" / "model" / "model.safetensors"))
    for candidate, same in (("candidate-1", True), ("candidate-0", False)):
        w = load_file(str(seed / "teach" / candidate / "mtl" / "model" / "model.safetensors"))
        assert set(w) == set(mtdnn_w)
        diff = max(float(abs(w[k].astype("float64") - mtdnn_w[k]).max()) for k in w)
        assert (diff < 1e-6) == same, (candidate, diff)
    card = json.loads((seed / "teach" / "candidate-1" / "mtl" / "model" / "model_card.json").read_text())
    assert str(seed / "mtl" / "model") in json.dumps(card)
    res = json.loads((out / "results.json").read_text())
    assert set(res["systems"]) == {"mtdnn", "ensemble", "mtdnn_kd"}
    # MT-DNN's MTL changes: the candidate that continues it is trained again, the other is reused
    stamps = {
        c: (seed / "teach" / c / "mtl" / "model" / "model.safetensors").stat().st_mtime_ns
        for c in ("candidate-0", "candidate-1")
    }
    assert main(["run", str(path), "--output-dir", str(out), "--set", "mtl.lr=2.0e-3"]) == 0
    now = {c: (seed / "teach" / c / "mtl" / "model" / "model.safetensors").stat().st_mtime_ns for c in stamps}
    assert now["candidate-0"] == stamps["candidate-0"] and now["candidate-1"] != stamps["candidate-1"]
    new_key = json.loads((seed / "mtl" / "DONE.json").read_text())["stage_key"]
    assert new_key != mtdnn_key
    assert json.loads((seed / "teach" / "candidate-1" / "mtl" / "DONE.json").read_text())["identity"]["init"] == {
        "stage": new_key
    }


def test_two_candidates_that_would_train_the_same_model_are_refused(glue_root, tiny_encoder, tmp_path, capsys):
    path = _kd_config(
        glue_root,
        tiny_encoder,
        tmp_path,
        candidates=[{"from_mtdnn": True, "seed": 5}, {"from_mtdnn": True, "seed": 5}],
        top_k=1,
    )
    assert main(["run", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    assert "kd.candidates[1] trains the same model as kd.candidates[0] at run seed 0 (seed 5" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
