"""Every YAML under configs/ (recursively) loads and validates, and resolves its tasks."""

from pathlib import Path

import pytest

from mtkd.config import load_config, to_dict
from mtkd.tasks import load_task_specs

CONFIGS = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))


def test_there_are_configs():
    names = {p.name for p in CONFIGS}
    assert {"demo.yaml", "glue-cpu.yaml", "glue-kd-cpu.yaml", "glue-kd-gpu.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_loads(path):
    cfg = load_config(path)
    specs = load_task_specs({n: o.override for n, o in cfg.tasks.items()}, cfg.tasks_file)
    assert specs
    for t in cfg.kd.teacher_tasks + cfg.kd.select_by:
        assert t in specs
    header = path.read_text().splitlines()[:12]
    assert any("mtkd run" in line for line in header), "the header comment shows the command that runs it"


V2 = Path(__file__).parent.parent / "configs" / "glue-kd-cpu-v2.yaml"


def test_kd_v2_config_has_the_levers_of_the_decisive_experiment():
    from mtkd.config import teacher_train_config

    cfg = load_config(V2)
    assert cfg.mtl.epochs == 1 == cfg.finetune.epochs
    # teachers: MT-DNN's MTL model + one more `mtl` epoch each, fine-tuned as MT-DNN is, all 3 kept
    assert teacher_train_config(cfg, "mtl") == cfg.mtl and teacher_train_config(cfg, "finetune") == cfg.finetune
    assert to_dict(cfg.kd.candidates) == [{"from_mtdnn": True}] * 3 and cfg.kd.top_k == 3 and cfg.seeds == [42]
    assert cfg.stages == ["mtl", "finetune", "teach", "distill"]
    assert set(cfg.kd.unlabeled) == {"MNLI", "QNLI", "QQP"} and set(cfg.kd.unlabeled) <= set(cfg.kd.teacher_tasks)
    assert all(src.from_train is True and cfg.tasks[t].train_cap for t, src in cfg.kd.unlabeled.items())


def test_kd_v2_config_plans_every_stage(tmp_path, tiny_encoder):
    """Planned (identities computed, nothing trained) on the tiny GLUE-layout fixture with the tiny
    encoder: the three candidates (each continuing MT-DNN's MTL stage), both students and the
    unlabeled text's labelling are stages."""
    import json

    from conftest import write_glue_fixture
    from mtkd.recipes import pipeline

    glue = write_glue_fixture(tmp_path / "glue")
    qnli = glue / "QNLI" / "partial" / "powerfulpromptft_sample"  # the config's QNLI sample file
    qnli.mkdir(parents=True)
    qnli.joinpath("train.json").write_text(json.dumps(
        {str(i): {"text_a": f"question {i}", "text_b": f"the film was {'good' if i % 2 else 'bad'} .",
                  "label": "entailment" if i % 2 else "not_entailment"} for i in range(48)}))
    overrides = [f"data.root={glue}", f"data.cache_dir={tmp_path / 'cache'}", f"encoder.name={tiny_encoder}",
                 "data.max_seq_len=32"] + [f"tasks.{t}.train_cap=30" for t in ("CoLA", "SST-2", "QQP", "MNLI", "QNLI")]
    out = tmp_path / "out"
    data, runner, _ = pipeline.plan(load_config(V2, overrides), out)
    keys = runner.stages.planned_keys()
    assert not runner.stages.problems
    planned = {Path(f).relative_to(out.resolve()).as_posix() for f in keys}
    assert {"seed-42/mtl/model", "seed-42/distill/mtl/model", "seed-42/distill_unlabeled/mtl/model",
            "seed-42/teach/soft_targets", "seed-42/teach/unlabeled/soft_targets"} <= planned
    candidates = [f"seed-42/teach/candidate-{i}/mtl/model" for i in range(3)]
    assert set(candidates) <= planned and "seed-42/teach/candidate-3/mtl/model" not in planned
    assert "seed-42/single_task/SST-2/model" not in planned
    by_folder = {Path(f).relative_to(out.resolve()).as_posix(): k for f, k in keys.items()}
    assert len({by_folder[c] for c in candidates}) == 3  # three seeds, three different teachers
    for t in ("MNLI", "QNLI", "QQP"):  # the unused rows: 18 of 48, none of them labelled training data
        labelled, unlabeled = data.train_set(t), data.train_set(f"{t}+unlabeled")
        assert len(unlabeled.indices) == 18 and not set(labelled.indices) & set(unlabeled.indices)


def test_kd_v2_unlabeled_text_adds_at_most_40_percent_student_steps():
    """The sizing comment of glue-kd-cpu-v2.yaml, from the real files' row counts (no tokenising)."""
    import math

    from mtkd.data import read_split, resolve_data_root

    cfg = load_config(V2)
    specs = load_task_specs({n: o.override for n, o in cfg.tasks.items()}, cfg.tasks_file)
    root = resolve_data_root(cfg.data.root)
    if not all((root / specs[t].splits["train"].path).is_file() for t in cfg.kd.unlabeled):
        pytest.skip(f"GLUE data not found under {root} (set MTKD_DATA_ROOT)")
    rows = {t: len(read_split(s, "train", cfg.data.root).ids) for t, s in specs.items() if "train" in s.splits}
    cap = {t: cfg.tasks[t].train_cap for t in rows}
    used = {t: min(n, cap[t]) if cap[t] else n for t, n in rows.items()}
    steps = sum(math.ceil(n / cfg.mtl.batch_size) for n in used.values())
    extra = sum(math.ceil(min(rows[t] - cap[t], src.cap or rows[t]) / cfg.mtl.batch_size)
                for t, src in cfg.kd.unlabeled.items())
    assert (steps, extra) == (1061, 408)  # the numbers the config's comment states
    assert extra / steps <= 0.40
