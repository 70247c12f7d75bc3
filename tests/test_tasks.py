"""Task definitions: the built-in GLUE tasks, overrides of them, custom task files, refusals."""

from __future__ import annotations

import json

import pytest
import yaml

from mtkd.config import RunConfig, validate
from mtkd.data import read_split
from mtkd.errors import ConfigError
from mtkd.tasks import GLUE_TASK_NAMES, FileFormat, HeadKind, TaskSpec, glue_tasks, load_task_specs, task_from_dict


# ============================================================================ built-in GLUE
def test_glue_definitions():
    t = glue_tasks()
    assert tuple(t) == GLUE_TASK_NAMES
    assert all(isinstance(s, TaskSpec) for s in t.values())
    assert [n for n, s in t.items() if s.head == HeadKind.REGRESSION] == ["STS-B"]
    assert t["STS-B"].num_outputs == 1 and t["STS-B"].label_range == (0.0, 5.0)
    assert t["MNLI"].num_outputs == 3 and t["MNLI"].dropout == 0.3
    assert t["CoLA"].metrics == ("mcc",) and t["CoLA"].dropout == 0.05
    assert t["MRPC"].metrics == ("accuracy", "f1") and t["MRPC"].dropout == 0.1
    assert t["CoLA"].splits["train"].columns == ("source", "label", "original_label", "sentence")
    assert t["CoLA"].splits["test"].columns is None
    assert t["CoLA"].fields_for("test") == {"id": "index", "text_a": "sentence"}
    assert t["CoLA"].fields_for("train") == {"text_a": "sentence", "label": "label"}
    assert t["QQP"].splits["train"].skip_malformed and not t["QQP"].splits["test"].skip_malformed
    assert t["AX"].head_name == "MNLI" and t["MNLI"].head_name == "MNLI"
    assert t["MNLI"].eval_splits("dev") == ["dev_matched", "dev_mismatched"]
    assert t["MNLI"].eval_splits("test") == ["test_matched", "test_mismatched"]
    assert t["MNLI"].report_name("dev_mismatched") == "MNLI-mm" and t["MNLI"].report_name("train") == "MNLI"
    assert all(s.format == FileFormat.TSV for spec in t.values() for s in spec.splits.values())


def test_to_dict_round_trips():
    for name, spec in glue_tasks().items():
        again = task_from_dict(name, yaml.safe_load(yaml.safe_dump(spec.to_dict())))
        assert again == spec, name


# ============================================================================ overrides
def test_override_replaces_a_split_file_keeping_its_other_settings():
    spec = load_task_specs({"CoLA": {"splits": {"train": {"path": "elsewhere/cola.tsv"}}}})["CoLA"]
    assert spec.splits["train"].path == "elsewhere/cola.tsv"
    assert spec.splits["train"].columns == ("source", "label", "original_label", "sentence")  # merged
    assert spec.splits["dev"].path == "CoLA/dev.tsv"


def test_override_split_given_as_a_path_string_and_format_guess():
    spec = load_task_specs({"QNLI": {"splits": {"train": "QNLI/sample.jsonl"}}})["QNLI"]
    assert spec.splits["train"].path == "QNLI/sample.jsonl" and spec.splits["train"].format == FileFormat.JSONL
    assert spec.splits["dev"].format == FileFormat.TSV


def test_override_removes_splits_with_none():
    spec = load_task_specs(
        {"MNLI": {"splits": {"dev_mismatched": None, "test_matched": None, "test_mismatched": None}}}
    )["MNLI"]
    assert list(spec.splits) == ["train", "dev_matched"]
    assert spec.eval_splits("test") == []


def test_override_fields_replace_not_merge():
    spec = load_task_specs({"MNLI": {"fields": {"text_a": "text_a", "text_b": "text_b", "label": "label"}}})["MNLI"]
    assert spec.fields == {"text_a": "text_a", "text_b": "text_b", "label": "label"}  # no stale 'id': 'index'


def test_override_scalar_values():
    spec = load_task_specs({"RTE": {"dropout": 0.25, "note": "a note"}})["RTE"]
    assert spec.dropout == 0.25 and spec.note == "a note"
    assert glue_tasks()["RTE"].dropout == 0.1  # the built-in definition is untouched


def test_override_is_read_with_the_new_file(tmp_path):
    f = tmp_path / "rte.jsonl"
    f.write_text(json.dumps({"p": "A man sleeps.", "h": "A man rests.", "gold": "entailment"}) + "\n")
    spec = load_task_specs(
        {"RTE": {"fields": {"text_a": "p", "text_b": "h", "label": "gold"}, "splits": {"train": {"path": str(f)}}}}
    )["RTE"]
    raw = read_split(spec, "train")
    assert raw.text_a == ["A man sleeps."] and raw.labels == [0] and raw.ids == ["0"]


def test_entries_none_or_empty_give_the_builtin():
    specs = load_task_specs({"SST-2": None, "RTE": {}})
    g = glue_tasks()
    assert specs == {"SST-2": g["SST-2"], "RTE": g["RTE"]}


def test_unknown_task_name_suggests_the_closest():
    with pytest.raises(
        ConfigError, match=r"task 'SST2' is neither a GLUE task nor defined in tasks_file \(did you mean 'SST-2'\?\)"
    ):
        load_task_specs({"SST2": {}})


def test_unknown_key_in_task_override():
    with pytest.raises(ConfigError, match=r"tasks\.RTE: unknown key 'dropuot' \(did you mean 'dropout'\?\)"):
        load_task_specs({"RTE": {"dropuot": 0.2}})
    # a key of the entry is named by its key path in the config, not by the definition's file
    with pytest.raises(ConfigError, match=r"^tasks\.RTE\.splits\.train: unknown key 'paht' \(did you mean 'path'\?\)"):
        load_task_specs({"RTE": {"splits": {"train": {"paht": "x.tsv"}}}})
    with pytest.raises(ConfigError, match=r"^tasks\.RTE\.fields: unknown key 'text_c'"):
        load_task_specs({"RTE": {"fields": {"text_a": "a", "text_c": "c"}}})
    with pytest.raises(
        ConfigError, match=r"^tasks\.RTE\.splits\.dev\.fields: unknown key 'lable' \(did you mean 'label'\?\)"
    ):
        load_task_specs({"RTE": {"splits": {"dev": {"fields": {"text_a": "a", "lable": "l"}}}}})


def test_run_options_in_an_entry_are_not_task_keys():
    """train_cap / dev_cap are allowed in an entry (one list: options and task keys) and are not
    merged into the definition (task_from_dict used to refuse them after the entry check passed)."""
    specs = load_task_specs({"SST-2": {"train_cap": 5, "dev_cap": 3, "dropout": 0.2}})
    assert specs["SST-2"].dropout == 0.2 and specs["SST-2"].splits == glue_tasks()["SST-2"].splits
    with pytest.raises(ConfigError, match=r"^tasks\.SST-2: unknown key 'override'"):
        load_task_specs({"SST-2": {"override": {}}})


def test_a_typo_in_the_config_is_blamed_on_the_config_a_typo_in_the_file_on_the_file(tmp_path):
    from mtkd.config import load_config

    f = tmp_path / "tasks.yaml"
    f.write_text(
        yaml.safe_dump(
            {
                "Reviews": {
                    "head": "classification",
                    "labels": ["neg", "pos"],
                    "fields": {"text_a": "t"},
                    "splits": {"dev": {"path": "d.jsonl"}},
                }
            }
        )
    )
    with pytest.raises(ConfigError) as e:
        load_config(None, [f"tasks_file={f}", "tasks.Reviews.splits.dev.fromat=jsonl"])
    assert str(e.value).startswith("config.tasks.Reviews.splits.dev: unknown key 'fromat' (did you mean 'format'?)")
    assert "defined in" not in str(e.value)
    f.write_text(
        yaml.safe_dump(
            {
                "Reviews": {
                    "head": "classification",
                    "labels": ["neg", "pos"],
                    "fields": {"text_a": "t"},
                    "splits": {"dev": {"path": "d.jsonl", "fromat": "jsonl"}},
                }
            }
        )
    )
    with pytest.raises(
        ConfigError,
        match=r"^tasks\.Reviews \(defined in .*tasks\.yaml\): task 'Reviews', split 'dev': "
        r"unknown key 'fromat'",
    ):
        load_task_specs({"Reviews": {}}, f)


def test_head_of_a_task_not_in_the_list_suggests_the_closest(tmp_path):
    f = tmp_path / "tasks.yaml"
    base = {"head": "classification", "labels": ["neg", "pos"], "fields": {"text_a": "t"}, "splits": {"test": "t.tsv"}}
    f.write_text(
        yaml.safe_dump({"Reviews": {**base, "splits": {"train": "r.tsv"}}, "Hard": {**base, "head_of": "Reviws"}})
    )
    with pytest.raises(
        ConfigError,
        match=r"task 'Hard' uses the head of 'Reviws', which is not in the task list "
        r"\['Reviews', 'Hard'\] \(did you mean 'Reviews'\?\)",
    ):
        validate(RunConfig(), load_task_specs({"Reviews": {}, "Hard": {}}, f))


def test_override_of_a_split_given_as_a_bare_path_is_merged_into_it(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("Mine:\n  head: regression\n  fields: {text_a: a, label: y}\n  splits: {train: m.csv, dev: d.tsv}\n")
    spec = load_task_specs({"Mine": {"splits": {"train": {"skip_malformed": True}}}}, f)["Mine"]
    assert spec.splits["train"].path == "m.csv" and spec.splits["train"].format == FileFormat.CSV
    assert spec.splits["train"].skip_malformed


def test_every_task_of_glue_and_a_tasks_file(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text(CUSTOM)
    specs = load_task_specs(None, f)
    assert list(specs)[: len(GLUE_TASK_NAMES)] == list(GLUE_TASK_NAMES) and {"MyRank", "MySent", "MyReg"} <= set(specs)
    assert load_task_specs(None) == glue_tasks()


def test_tasks_file_that_is_not_yaml(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("Mine: {head: [\n")
    with pytest.raises(ConfigError, match=r"t\.yaml: invalid YAML"):
        load_task_specs({"Mine": {}}, f)


def test_head_of_a_task_not_in_the_list_is_refused():
    with pytest.raises(ConfigError, match=r"task 'AX' uses the head of 'MNLI', which is not in the task list"):
        validate(RunConfig(), load_task_specs({"AX": {}, "RTE": {}}))
    specs = load_task_specs({"AX": {}, "MNLI": {}})
    assert specs["AX"].head_name == "MNLI"


# ============================================================================ custom task files
CUSTOM = """
MyRank:
  head: ranking
  metrics: [accuracy]
  fields: {id: qid, text_a: query, text_b: passage, label: relevant}
  splits:
    train: {path: rank/train.tsv}
    dev: {path: rank/dev.jsonl}
MySent:
  head: classification
  labels: [negative, neutral, positive]
  metrics: [accuracy, mcc]
  dropout: 0.2
  fields: {text_a: text, label: sentiment}
  splits:
    train: {path: sent/train.csv, skip_malformed: true}
    test: {path: sent/test.csv, fields: {id: uid, text_a: text}, report_as: MySent-test}
MyReg:
  head: regression
  label_range: [1, 10]
  fields: {text_a: a, label: score}
  splits:
    train: reg/train.json
"""


def test_custom_tasks_file(tmp_path):
    f = tmp_path / "tasks.yaml"
    f.write_text(CUSTOM)
    specs = load_task_specs({"MyRank": {}, "MySent": None, "MyReg": {}, "RTE": {}}, tasks_file=f)
    r = specs["MyRank"]
    assert r.head == HeadKind.RANKING and r.labels == ("0", "1") and r.num_outputs == 1
    assert r.splits["train"].format == FileFormat.TSV and r.splits["dev"].format == FileFormat.JSONL
    s = specs["MySent"]
    assert s.num_outputs == 3 and s.dropout == 0.2 and s.metrics == ("accuracy", "mcc")
    assert s.splits["train"].format == FileFormat.CSV and s.splits["train"].skip_malformed
    assert s.fields_for("test") == {"id": "uid", "text_a": "text"} and s.report_name("test") == "MySent-test"
    g = specs["MyReg"]
    assert (
        g.head == HeadKind.REGRESSION and g.label_range == (1.0, 10.0) and g.splits["train"].format == FileFormat.JSON
    )
    assert specs["RTE"] == glue_tasks()["RTE"]  # GLUE tasks stay available next to custom ones
    # a custom task can be overridden like a GLUE one
    again = load_task_specs({"MySent": {"splits": {"test": None}, "dropout": 0.0}}, tasks_file=f)["MySent"]
    assert list(again.splits) == ["train"] and again.dropout == 0.0


def test_custom_ranking_task_is_readable(tmp_path):
    (tmp_path / "tasks.yaml").write_text(CUSTOM)
    (tmp_path / "rank").mkdir()
    (tmp_path / "rank" / "train.tsv").write_text(
        "qid\tquery\tpassage\trelevant\nq1-a\tcats\tcats purr\t1\nq1-b\tcats\tcars\t0\n"
    )
    spec = load_task_specs({"MyRank": {}}, tasks_file=tmp_path / "tasks.yaml")["MyRank"]
    raw = read_split(spec, "train", tmp_path)
    assert raw.ids == ["q1-a", "q1-b"] and raw.labels == [1, 0] and raw.text_b == ["cats purr", "cars"]


def test_tasks_file_errors(tmp_path):
    with pytest.raises(ConfigError, match=r"tasks_file '.*nope\.yaml' does not exist"):
        load_task_specs({"X": {}}, tasks_file=tmp_path / "nope.yaml")
    bad = tmp_path / "list.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match=r"list\.yaml: expected a mapping task-name -> definition"):
        load_task_specs({"a": {}}, tasks_file=bad)
    f = tmp_path / "t.yaml"
    f.write_text(CUSTOM)
    with pytest.raises(ConfigError, match=r"task 'MyRnak' is neither.*did you mean 'MyRank'"):
        load_task_specs({"MyRnak": {}}, tasks_file=f)


@pytest.mark.parametrize(
    "d,msg",
    [
        (
            {"head": "softmax", "fields": {"text_a": "a"}, "splits": {}},
            r"field 'head': 'softmax' is not one of \['classification', 'regression', 'ranking'\]",
        ),
        ({"fields": {"text_a": "a"}, "splits": {}}, r"missing required key 'head'"),
        ({"head": "regression", "fields": {"text_b": "b"}, "splits": {}}, r"'text_a' is required"),
        ({"head": "regression", "fields": ["a"], "splits": {}}, r"field 'fields': expected a mapping"),
        (
            {"head": "classification", "labels": ["x"], "fields": {"text_a": "a"}, "splits": {}},
            r"needs at least 2 label names",
        ),
        (
            {"head": "classification", "labels": ["x", "x"], "fields": {"text_a": "a"}, "splits": {}},
            r"duplicate label names \['x', 'x'\]",
        ),
        (
            {"head": "regression", "metrics": ["pearsn"], "fields": {"text_a": "a"}, "splits": {}},
            r"unknown metric 'pearsn' \(did you mean 'pearson'\?\)",
        ),
        (
            {"head": "regression", "fields": {"text_a": "a"}, "splits": {"train": {"format": "tsv"}}},
            r"split 'train': missing required key 'path'",
        ),
        (
            {"head": "regression", "fields": {"text_a": "a"}, "splits": {"train": {"path": "x", "format": "xml"}}},
            r"field 'format': 'xml' is not one of",
        ),
        (
            {"head": "regression", "fields": {"text_a": "a"}, "splits": {"train": 5}},
            r"split 'train': expected a path or a mapping, got int 5",
        ),
        (
            {"head": "regression", "fields": {"text_a": "a"}, "splits": {"train": {"path": "x", "fields": "a"}}},
            r"split 'train', field 'fields': expected a mapping",
        ),
        ({"head": "regression", "fields": {"text_a": "a"}, "splits": ["train"]}, r"field 'splits': expected a mapping"),
        (
            {"head": "regression", "dropout": 1.5, "fields": {"text_a": "a"}, "splits": {}},
            r"field 'dropout': expected a number in \[0, 1\), got 1.5",
        ),
        ({"head": "regression", "dropout": "high", "fields": {"text_a": "a"}, "splits": {}}, r"field 'dropout'"),
        ("not a mapping", r"expected a mapping, got str"),
        (
            {"head": "clasification", "fields": {"text_a": "a"}, "splits": {}},
            r"'clasification' is not one of .* \(did you mean 'classification'\?\)",
        ),
        (
            {"head": "regression", "fields": {"txt_a": "a"}, "splits": {}},
            r"field 'fields': unknown key 'txt_a' \(did you mean 'text_a'\?\)",
        ),
        (
            {"head": "regression", "fields": {"text_a": 3}, "splits": {}},
            r"field 'fields': text_a must name a column \(a string\), got 3",
        ),
        (
            {"head": "regression", "fields": {"text_a": "a"}, "splits": {"train": {"path": "x", "fromat": "csv"}}},
            r"split 'train': unknown key 'fromat' \(did you mean 'format'\?\)",
        ),
        (
            {"head": "regression", "fields": {"text_a": "a"}, "splits": {"train": {"path": "x", "format": "jsnl"}}},
            r"\(did you mean 'jsonl'\?\)",
        ),
        (
            {"head": "regression", "fields": {"text_a": "a"}, "splits": {"validation": "x"}},
            r"split name 'validation': a split is train, dev, dev_<name>",
        ),
        (
            {"head": "regression", "fields": {"text_a": "a"}, "splits": {"tset": "x"}},
            r"split name 'tset'.*\(did you mean 'test'\?\)",
        ),
        (
            {"head": "classification", "labels": "neg,pos", "fields": {"text_a": "a"}, "splits": {}},
            r"field 'labels': expected a list, got str",
        ),
        (
            {"head": "regression", "metrics": "pearson", "fields": {"text_a": "a"}, "splits": {}},
            r"field 'metrics': expected a list, got str",
        ),
        (
            {"head": "regression", "metrics": ["accuracy"], "fields": {"text_a": "a"}, "splits": {}},
            r"'accuracy' does not score a regression task; use \['pearson', 'spearman'\]",
        ),
        (
            {
                "head": "classification",
                "labels": ["a", "b"],
                "metrics": ["pearson"],
                "fields": {"text_a": "a"},
                "splits": {},
            },
            r"'pearson' does not score a classification task",
        ),
        (
            {
                "head": "classification",
                "labels": ["a", "b", "c"],
                "metrics": ["f1"],
                "fields": {"text_a": "a"},
                "splits": {},
            },
            r"f1 scores a task with 2 labels",
        ),
        (
            {"head": "regression", "label_range": [5, 0], "fields": {"text_a": "a"}, "splits": {}},
            r"field 'label_range': expected \[low, high\] with low < high, got \[5, 0\]",
        ),
        (
            {"head": "regression", "label_range": 5, "fields": {"text_a": "a"}, "splits": {}},
            r"field 'label_range': expected \[low, high\]",
        ),
        (
            {
                "head": "classification",
                "labels": ["a", "b"],
                "label_range": [0, 1],
                "fields": {"text_a": "a"},
                "splits": {},
            },
            r"field 'label_range': only regression tasks have one",
        ),
        (
            {"head": "regression", "note": ["x"], "fields": {"text_a": "a"}, "splits": {}},
            r"field 'note': expected a string, got list",
        ),
        (
            {"head": "regression", "head_of": "../x", "fields": {"text_a": "a"}, "splits": {}},
            r"field 'head_of': '\.\./x' is not a valid name",
        ),
        (
            {
                "head": "regression",
                "fields": {"text_a": "a"},
                "splits": {"train": {"path": "x.json", "columns": ["a"]}},
            },
            r"field 'columns': only a TSV or CSV file without a header line has columns",
        ),
        (
            {
                "head": "regression",
                "fields": {"text_a": "a"},
                "splits": {"train": {"path": "x", "columns": ["a", "a"]}},
            },
            r"field 'columns': expected distinct column names",
        ),
        (
            {
                "head": "regression",
                "fields": {"text_a": "a"},
                "splits": {"train": {"path": "x", "skip_malformed": "yes"}},
            },
            r"field 'skip_malformed': expected true or false, got str 'yes'",
        ),
        (
            {"head": "regression", "fields": {"text_a": "a"}, "splits": {"dev": "a", "dev_b": "b"}},
            r"splits 'dev' and 'dev_b' both report as 'Mine'; give one of them another report_as",
        ),
    ],
)
def test_bad_task_definitions(d, msg):
    with pytest.raises(ConfigError, match=msg) as ei:
        task_from_dict("Mine", d, "my.yaml")
    assert str(ei.value).startswith("my.yaml: task 'Mine'")


def test_mtkd_tasks_into_a_closed_pipe_exits_quietly():
    """`mtkd tasks | head`: the reader goes away; no BrokenPipeError traceback, exit 141 (SIGPIPE)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtkd.cli", "tasks"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env
    )
    proc.stdout.close()  # before the command writes anything
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err, err
