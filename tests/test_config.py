"""Configs: YAML + dotted overrides, strict keys (with suggestions) and types."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import tiny_config
from mtkd.config import (EncoderConfig, Optimizer, Precision, RunConfig, Stage, TaskOptions, apply_override,
                         load_config, save_config, to_dict)
from mtkd.errors import ConfigError, MtkdError
from mtkd.sampler import SamplingMode
from mtkd.tasks import load_task_specs


def _write(tmp_path, raw, name="cfg.yaml") -> Path:
    p = tmp_path / name
    p.write_text(raw if isinstance(raw, str) else yaml.safe_dump(raw), encoding="utf-8")
    return p


def _specs(cfg: RunConfig):
    """Resolve the task list the way the recipes do (mtkd.task_data.TaskData)."""
    return load_task_specs({n: o.override for n, o in cfg.tasks.items()}, cfg.tasks_file)


def test_defaults():
    cfg = load_config(None)
    assert cfg.seeds == [42]
    assert cfg.stages == [Stage.MTL, Stage.FINETUNE, Stage.EVALUATE, Stage.PREDICT]
    assert cfg.mtl.lr == 5e-5 and cfg.mtl.optimizer is Optimizer.ADAMAX and cfg.mtl.epochs == 5
    assert cfg.finetune.epochs == 1 and cfg.data.max_seq_len == 512 and cfg.kd.student is None


def test_load_yaml_with_enums_and_task_entries(tmp_path):
    p = _write(tmp_path, """
seeds: [1, 2]
stages: [single_task, mtl]
encoder: {name: x, num_hidden_layers: 3}
tasks:
  SST-2: {train_cap: 100, dev_cap: 20}
  RTE:
  MNLI:
    dropout: 0.2
    splits: {dev_mismatched: null}
mtl: {optimizer: adamw, precision: bf16, sampling: temperature, temperature: 2, lr: 1.0e-4, epochs: 2}
kd: {student: {name: small, num_hidden_layers: 2}, candidates: [{seed: 1, dropout: 0.1}]}
""")
    cfg = load_config(p)
    assert cfg.seeds == [1, 2] and cfg.stages == [Stage.SINGLE_TASK, Stage.MTL]
    assert cfg.encoder == EncoderConfig(name="x", num_hidden_layers=3)
    assert cfg.tasks["SST-2"] == TaskOptions(train_cap=100, dev_cap=20)
    assert cfg.tasks["RTE"] == TaskOptions()  # `RTE:` (null) is an entry with no changes
    assert cfg.tasks["MNLI"].override == {"dropout": 0.2, "splits": {"dev_mismatched": None}}
    assert cfg.mtl.optimizer is Optimizer.ADAMW and cfg.mtl.precision is Precision.BF16
    assert cfg.mtl.sampling is SamplingMode.TEMPERATURE
    assert isinstance(cfg.mtl.temperature, float) and cfg.mtl.temperature == 2.0
    assert cfg.mtl.lr == 1e-4 and isinstance(cfg.mtl.epochs, float)
    assert cfg.kd.student == EncoderConfig(name="small", num_hidden_layers=2)
    assert to_dict(cfg.kd.candidates) == [{"seed": 1, "dropout": 0.1}]
    specs = _specs(cfg)
    assert specs["MNLI"].dropout == 0.2 and "dev_mismatched" not in specs["MNLI"].splits
    assert set(specs) == {"SST-2", "RTE", "MNLI"}


def test_tiny_config_loads(tmp_path):
    raw = tiny_config(tmp_path / "glue", tmp_path / "enc", tmp_path / "cache", tasks=("SST-2", "MNLI", "QQP"))
    cfg = load_config(_write(tmp_path, raw))
    specs = _specs(cfg)
    assert list(specs["MNLI"].splits) == ["train", "dev_matched"]
    assert specs["QQP"].splits["train"].format.value == "json" and "test" not in specs["QQP"].splits


def test_overrides_set_and_delete(tmp_path):
    p = _write(tmp_path, {"tasks": {"SST-2": {"train_cap": 5}, "RTE": None}, "mtl": {"batch_size": 8}})
    cfg = load_config(p, ["mtl.lr=0.001", "mtl.batch_size=16", "data.root=/x/y", "stages=[mtl]",
                          "tasks.RTE.train_cap=7", "~tasks.SST-2.train_cap", "tasks.QNLI.note=hello world",
                          "encoder.num_hidden_layers=null", "notes=a=b"])
    assert cfg.mtl.lr == 0.001 and cfg.mtl.batch_size == 16 and cfg.data.root == "/x/y"
    assert cfg.stages == [Stage.MTL]
    assert cfg.tasks["RTE"].train_cap == 7  # set inside a task given as `RTE: null`
    assert cfg.tasks["SST-2"].train_cap is None
    assert cfg.tasks["QNLI"].override == {"note": "hello world"}
    assert cfg.encoder.num_hidden_layers is None and cfg.notes == "a=b"


def test_scientific_notation_is_a_number():
    cfg = load_config(None, ["mtl.lr=5e-5", "finetune.lr=2E-4", "kd.temperature=1e1"])
    assert cfg.mtl.lr == 5e-5 and cfg.finetune.lr == 2e-4 and cfg.kd.temperature == 10.0


def test_apply_override_on_raw_dicts():
    raw = {"a": {"b": 1}}
    apply_override(raw, "a.c.d=[1, 2]")
    assert raw == {"a": {"b": 1, "c": {"d": [1, 2]}}}
    apply_override(raw, "~a.b")
    apply_override(raw, "~x.y.z")  # deleting something absent is a no-op
    apply_override(raw, "~a.c.d.e")
    assert raw == {"a": {"c": {"d": [1, 2]}}}
    raw = {"tasks": {"RTE": None}}
    apply_override(raw, "~tasks.RTE.train_cap")
    assert raw == {"tasks": {"RTE": None}}


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match=r"override 'mtl.lr': expected key=value"):
        load_config(None, ["mtl.lr"])
    with pytest.raises(ConfigError, match=r"override 'mtl.lr=\[1,': the value is not valid YAML"):
        load_config(None, ["mtl.lr=[1,"])
    with pytest.raises(ConfigError, match=r"override 'mtl.batch_size.x=3': 'batch_size' is not a section"):
        apply_override({"mtl": {"batch_size": 2}}, "mtl.batch_size.x=3")


@pytest.mark.parametrize("raw,msg", [
    ({"mtl": {"epoch": 3}}, r"\.mtl: unknown key 'epoch' \(did you mean 'epochs'\?\)"),
    ({"mtl": {"lerning_rate": 1.0}}, r"\.mtl: unknown key 'lerning_rate'"),
    ({"mtl": {"batchsize": 3}}, r"unknown key 'batchsize' \(did you mean 'batch_size'\?\)"),
    ({"seed": [1]}, r"unknown key 'seed' \(did you mean 'seeds'\?\)"),
    ({"data": {"max_len": 12}}, r"\.data: unknown key 'max_len'"),
    ({"kd": {"student": {"nme": "x"}}}, r"\.kd\.student: unknown key 'nme' \(did you mean 'name'\?\)"),
])
def test_unknown_keys_name_the_file_and_suggest(tmp_path, raw, msg):
    p = _write(tmp_path, raw)
    with pytest.raises(ConfigError, match=msg) as ei:
        load_config(p)
    assert str(ei.value).startswith(str(p))


@pytest.mark.parametrize("raw,msg", [
    ({"mtl": {"batch_size": "big"}}, r"\.mtl\.batch_size: expected an integer, got str 'big'"),
    ({"mtl": {"batch_size": 3.5}}, r"\.mtl\.batch_size: expected an integer, got float 3\.5"),
    ({"mtl": {"batch_size": True}}, r"\.mtl\.batch_size: expected an integer, got bool True"),
    ({"mtl": {"lr": True}}, r"\.mtl\.lr: expected a number, got bool True"),
    ({"mtl": {"lr": "fast"}}, r"\.mtl\.lr: expected a number, got str 'fast'"),
    ({"mtl": {"optimizer": "sgd"}}, r"\.mtl\.optimizer: 'sgd' is not one of \['adamax', 'adamw'\]"),
    ({"mtl": {"precision": "fp8"}}, r"\.mtl\.precision: 'fp8' is not one of \['auto', 'fp32', 'bf16', 'fp16'\]"),
    ({"stages": ["mtl", "train"]}, r"\.stages\[1\]: 'train' is not one of"),
    ({"stages": "mtl"}, r"\.stages: expected a list, got str 'mtl'"),
    ({"seeds": [1, "two"]}, r"\.seeds\[1\]: expected an integer, got str 'two'"),
    ({"predict": {"submission": "yes"}}, r"\.predict\.submission: expected true or false, got str 'yes'"),
    ({"data": {"root": 5}}, r"\.data\.root: expected a string, got int 5"),
    ({"tasks": ["SST-2"]}, r"\.tasks: expected a mapping, got list"),
    ({"tasks": {"SST-2": {"train_cap": "all"}}}, r"\.tasks\.SST-2\.train_cap: expected an integer, got str 'all'"),
    ({"mtl": 5}, r"\.mtl: expected a mapping, got int 5"),
    ({"seeds": []}, r"seeds must hold at least one seed"),
])
def test_wrong_types(tmp_path, raw, msg):
    p = _write(tmp_path, raw)
    with pytest.raises(ConfigError, match=msg) as ei:
        load_config(p)
    assert str(p) in str(ei.value)


def test_wrong_type_via_override():
    with pytest.raises(ConfigError, match=r"config\.mtl\.batch_size: expected an integer, got str 'big'"):
        load_config(None, ["mtl.batch_size=big"])
    with pytest.raises(ConfigError, match=r"config\.mtl\.optimizer: 'sgd' is not one of"):
        load_config(None, ["mtl.optimizer=sgd"])
    with pytest.raises(ConfigError, match=r"unknown key 'epoch' \(did you mean 'epochs'\?\)"):
        load_config(None, ["mtl.epoch=3"])


def test_unknown_task_name_in_config(tmp_path):
    cfg = load_config(_write(tmp_path, {"tasks": {"SST-2": {}, "MNLl": {}}}))
    with pytest.raises(ConfigError, match=r"task 'MNLl' is neither a GLUE task nor defined in tasks_file \(did you mean 'MNLI'\?\)"):
        _specs(cfg)


def test_unknown_task_key_in_config_is_refused_at_load(tmp_path):
    with pytest.raises(ConfigError, match=r"\.tasks\.RTE: unknown key 'dropot' \(did you mean 'dropout'\?\)"):
        load_config(_write(tmp_path, {"tasks": {"RTE": {"train_cap": 3, "dropot": 0.1}}}))
    cfg = load_config(_write(tmp_path, {"tasks": {"RTE": {"train_cap": 3, "dropout": 0.2}}}))
    assert cfg.tasks["RTE"].train_cap == 3 and _specs(cfg)["RTE"].dropout == 0.2


def test_typo_in_a_task_override_suggests_options_and_task_keys(tmp_path):
    """Issue 14 item 7: tasks.<name> holds the run's options (train_cap, dev_cap) and any task key;
    a typo of either gets a suggestion, and the allowed list holds both."""
    with pytest.raises(ConfigError) as e:
        load_config(_write(tmp_path, {"tasks": {"RTE": {"trian_cap": 3}}}))
    msg = str(e.value)
    assert "tasks.RTE: unknown key 'trian_cap' (did you mean 'train_cap'?); allowed: [" in msg
    for key in ("train_cap", "dev_cap", "dropout", "splits", "labels", "max_seq_len"):
        assert repr(key) in msg
    with pytest.raises(ConfigError, match=r"tasks\.RTE: unknown key 'dev_cpa' \(did you mean 'dev_cap'\?\)"):
        load_config(None, ["tasks.RTE.dev_cpa=5"])
    # the same list when the task specs are built from entries directly
    with pytest.raises(ConfigError, match=r"tasks\.RTE: unknown key 'trian_cap' \(did you mean 'train_cap'\?\); allowed: .*'dev_cap'"):
        load_task_specs({"RTE": {"trian_cap": 3}})


@pytest.mark.parametrize("raw, msg", [
    ({"mtl": {"optimizer": "adammax"}}, r"'adammax' is not one of \['adamax', 'adamw'\] \(did you mean 'adamax'\?\)"),
    ({"mtl": {"sampling": "proportionl"}}, r"\(did you mean 'proportional'\?\)"),
    ({"Tasks": {}}, r"unknown key 'Tasks' \(did you mean 'tasks'\?\)"),
])
def test_one_suggestion_mechanism_for_sections_and_values(tmp_path, raw, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(_write(tmp_path, raw))


def test_tasks_file_relative_to_the_config(tmp_path):
    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "mine.yaml").write_text("Mine:\n  head: regression\n  fields: {text_a: a, label: y}\n  splits: {train: m.tsv}\n")
    cfg = load_config(_write(tmp_path / "conf", {"tasks_file": "mine.yaml", "tasks": {"Mine": {}}}))
    assert cfg.tasks_file == str(tmp_path / "conf" / "mine.yaml")
    assert _specs(cfg)["Mine"].splits["train"].path == "m.tsv"


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"config file '.*missing\.yaml' does not exist"):
        load_config(tmp_path / "missing.yaml")
    p = _write(tmp_path, "mtl: {lr: [1,\n", "bad.yaml")
    with pytest.raises(ConfigError, match=r"bad\.yaml: invalid YAML"):
        load_config(p)
    p = _write(tmp_path, "- 1\n- 2\n", "list.yaml")
    with pytest.raises(ConfigError, match=r"list\.yaml: expected a mapping at the top level"):
        load_config(p)
    assert issubclass(ConfigError, MtkdError)


def test_empty_file_is_the_defaults(tmp_path):
    assert load_config(_write(tmp_path, "", "empty.yaml")) == load_config(None)


def test_save_and_reload_round_trip(tmp_path):
    p = _write(tmp_path, {"tasks": {"MNLI": {"train_cap": 10, "splits": {"test_matched": None}}},
                          "mtl": {"optimizer": "adamw", "lr": 3.0e-4}, "stages": ["teach", "distill"],
                          "kd": {"student": {"num_hidden_layers": 3}}})
    cfg = load_config(p)
    out = tmp_path / "saved.yaml"
    save_config(cfg, out)
    saved = yaml.safe_load(out.read_text())
    assert saved["mtl"]["optimizer"] == "adamw" and saved["stages"] == ["teach", "distill"]
    assert saved["tasks"]["MNLI"] == {"train_cap": 10, "dev_cap": None, "splits": {"test_matched": None}}
    assert load_config(out) == cfg
    assert to_dict(cfg) == saved


def test_a_typo_in_a_kd_unlabeled_task_name_is_named_before_what_the_entry_asks():
    """kd.unlabeled={Reviws: {from_train: true}} used to say "Reviws has no train_cap"."""
    base = ["tasks={Reviews: {train_cap: 5}, SST-2: {}}"]
    for entry in ("{from_train: true}", "{path: x.tsv}"):
        with pytest.raises(ConfigError, match=r"kd\.unlabeled: no task 'Reviws' in the config's tasks "
                                              r"\['Reviews', 'SST-2'\] \(did you mean 'Reviews'\?\)"):
            load_config(None, base + [f"kd.unlabeled={{Reviws: {entry}}}"])
    assert "Reviews" in load_config(None, base + ["kd.unlabeled={Reviews: {from_train: true}}"]).kd.unlabeled


def test_load_config_records_the_keys_given_and_does_not_save_them(tmp_path):
    cfg = load_config(_write(tmp_path, {"data": {"max_seq_len": 64}}), ["mtl={epochs: 2}", "~data.max_seq_len"])
    assert "mtl.epochs" in cfg.given and "data.max_seq_len" not in cfg.given and cfg.data.max_seq_len == 512
    assert "data.max_seq_len" in load_config(None, ["data={max_seq_len: 8}"]).given
    save_config(cfg, tmp_path / "out.yaml")
    saved = yaml.safe_load((tmp_path / "out.yaml").read_text())
    assert "given" not in saved and saved["data"]["max_seq_len"] == 512  # the effective value


@pytest.mark.parametrize("candidate, message", [
    ("{dropuot: 0.2}", r"kd\.candidates\[0\]: unknown key 'dropuot' \(did you mean 'dropout'\?\)"),
    ("{seed: -1}", r"kd\.candidates\[0\]\.seed must be an integer >= 0, got -1"),
    ("{seed: true}", r"kd\.candidates\[0\]\.seed: expected an integer, got bool True"),
    ("{seed: null}", r"kd\.candidates\[0\]\.seed: expected an integer, got NoneType None"),
    ("{encoder: ''}", r"kd\.candidates\[0\]\.encoder must be an encoder name or folder"),
    ("{from_mtdnn: 'yes'}", r"kd\.candidates\[0\]\.from_mtdnn: expected true or false, got str 'yes'"),
    ("{from_mtdnn: true, dropout: 0.2}", r"kd\.candidates\[0\]: from_mtdnn continues MT-DNN's MTL model, which has "
                                         r"its own dropout; remove dropout"),
])
def test_a_bad_teacher_candidate_is_named(candidate, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, ["stages=[mtl, teach]", f"kd.candidates=[{candidate}]"])


def test_a_from_mtdnn_candidate_needs_the_mtl_stage():
    with pytest.raises(ConfigError, match=r"kd\.candidates\[1\]\.from_mtdnn needs MT-DNN's MTL model: add mtl to"):
        load_config(None, ["stages=[teach, distill]", "kd.candidates=[{dropout: 0.1}, {from_mtdnn: true}]"])
    # a config without teach or distill does not train teachers: its candidates need no MT-DNN
    assert load_config(None, ["stages=[single_task]", "kd.candidates=[{from_mtdnn: true}]"]).stages == ["single_task"]
    cfg = load_config(None, ["stages=[mtl, teach]", "kd.candidates=[{seed: 5, from_mtdnn: true}]"])
    assert to_dict(cfg.kd.candidates) == [{"seed": 5, "from_mtdnn": True}]
