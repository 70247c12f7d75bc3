"""`mtkd check-config` checks what `mtkd run` checks before training, with the same messages
(issue 14): task keys, split files, headers and columns, per-task lengths; with --data every row.
Also `mtkd tasks --tasks-file`, all file problems at once, and the task format in docs/tasks.md."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config
from mtkd.cli import main

TASK = {
    "head": "classification",
    "labels": ["neg", "pos"],
    "metrics": ["accuracy"],
    "fields": {"id": "id", "text_a": "review", "label": "sentiment"},
    "splits": {"train": "my/train.tsv", "dev": "my/dev.tsv", "test": "my/test.tsv"},
}
ROWS = "id\treview\tsentiment\n1\ta good film\tpos\n2\ta bad film\tneg\n"


@pytest.fixture
def setup(tmp_path, tiny_encoder):
    """A data root with one custom task's files, and a writer of configs that use it."""
    root = tmp_path / "data"
    (root / "my").mkdir(parents=True)
    for split in ("train", "dev"):
        (root / "my" / f"{split}.tsv").write_text(ROWS)

    def write(task=None, entry=None, name="cfg.yaml", **sections) -> Path:
        tasks_file = tmp_path / f"{name}.tasks.yaml"
        tasks_file.write_text(yaml.safe_dump({"My": task or TASK}))
        raw = tiny_config(root, tiny_encoder, tmp_path / "cache", tasks=(), stages=["mtl"], **sections)
        raw.update(tasks_file=str(tasks_file), tasks={"My": entry or {}})
        path = tmp_path / name
        path.write_text(yaml.safe_dump(raw))
        return path

    return root, write


def _both(capsys, cfg: Path, tmp_path, data: bool = False) -> tuple[int, str, int, str]:
    """(check-config exit, its stderr, run exit, run's error line(s))."""
    rc = main(["check-config", str(cfg)] + (["--data"] if data else []))
    check = capsys.readouterr().err
    run_rc = main(["run", str(cfg), "--output-dir", str(tmp_path / "out")])
    run_err = capsys.readouterr().err
    return rc, check, run_rc, run_err[run_err.index("mtkd: error:") :] if "mtkd: error:" in run_err else run_err


def test_valid_config_prints_the_resolved_yaml_and_what_was_checked(setup, capsys):
    _, write = setup
    cfg = write(entry={"train_cap": 1, "max_seq_len": 16})
    assert main(["check-config", str(cfg)]) == 0
    out, err = capsys.readouterr()
    printed = yaml.safe_load(out)
    assert printed["tasks"]["My"] == {"train_cap": 1, "dev_cap": None, "max_seq_len": 16}
    assert (
        "checked: config, tasks (1), encoder lengths, files (2: headers, columns, first rows; "
        "rows not read: add --data)" in err
    )
    # the absent test file is a note (predict lists it as missing), as for run
    assert re.search(r"note: .*my/test\.tsv: file not found \(task My, split test; set data.root", err)
    assert main(["check-config", str(cfg), "--data"]) == 0
    assert "files (2: every row)" in capsys.readouterr().err


# the six broken configs of issue 14 (and a per-task length beyond the encoder): check-config said
# "fine" (exit 0) to each; now it refuses each with the message run gives
HEADER_BROKEN = [
    (
        "wrong column",
        {"task": {**TASK, "fields": {"id": "id", "text_a": "reviw", "label": "sentiment"}}},
        "header has no column 'reviw' for text_a (task My) (did you mean 'review'?); "
        "header is ['id', 'review', 'sentiment']",
    ),
    (
        "missing file",
        {"task": {**TASK, "splits": {**TASK["splits"], "dev": "my/nope.tsv"}}},
        "my/nope.tsv: file not found (task My, split dev; set data.root or $MTKD_DATA_ROOT)",
    ),
    (
        "key typo in the tasks file",
        {"task": {**TASK, "metric": ["accuracy"]}},
        "task 'My': unknown key 'metric' (did you mean 'metrics'?); allowed: [",
    ),
    (
        "typo in a task override",
        {"entry": {"trian_cap": 3}},
        "tasks.My: unknown key 'trian_cap' (did you mean 'train_cap'?); allowed: ['dev_cap', ",
    ),
    (
        "length beyond the encoder",
        {"entry": {"max_seq_len": 500}},
        "tasks.My.max_seq_len is 500, but the encoder (bert) takes at most 128 tokens; set tasks.My.max_seq_len <= 128",
    ),
    (
        "split length beyond the encoder",
        {"entry": {"splits": {"dev": {"max_seq_len": 200}}}},
        "tasks.My.splits.dev.max_seq_len is 200, but the encoder (bert) takes at most 128 tokens",
    ),
]


@pytest.mark.parametrize("what, change, message", HEADER_BROKEN, ids=[b[0] for b in HEADER_BROKEN])
def test_broken_config_refused_as_run_refuses_it(setup, tmp_path, capsys, what, change, message):
    _, write = setup
    rc, check, run_rc, run_err = _both(capsys, write(**change), tmp_path)
    assert (rc, run_rc) == (2, 2)
    assert message in check
    assert check.strip() == run_err.strip()  # the same message, word for word
    assert not (tmp_path / "out").exists() and not (tmp_path / "cache").exists()  # nothing tokenised


TASK_LIST_BROKEN = [
    (
        "finetune task without training data",
        {"finetune_tasks": ["Myy"]},
        "finetune_tasks: task 'Myy' is not a task with training data ['My'] (did you mean 'My'?)",
    ),
    (
        "teacher task not in the list",
        {"kd": {"teacher_tasks": ["MNLI"]}},
        "kd.teacher_tasks: task 'MNLI' is not in the task list ['My']",
    ),
    (
        "top_k above the candidates",
        {"kd": {"teacher_tasks": ["My"], "candidates": [{"dropout": 0.1}], "top_k": 2}},
        "kd.top_k is 2 but there are 1 teacher candidates (kd.candidates)",
    ),
]


@pytest.mark.parametrize("what, sections, message", TASK_LIST_BROKEN, ids=[b[0] for b in TASK_LIST_BROKEN])
def test_task_lists_checked_before_anything_runs(setup, tmp_path, capsys, what, sections, message):
    _, write = setup
    rc, check, run_rc, run_err = _both(capsys, write(**sections), tmp_path)
    assert (rc, run_rc) == (2, 2) and message in check and check.strip() == run_err.strip()
    assert not (tmp_path / "cache").exists()


ROW_BROKEN = [
    (
        "unknown label",
        ROWS + "3\tso-so\tmeh\n",
        "my/train.tsv, line 4, field 'sentiment': unknown label 'meh'; task My expects one of ['neg', 'pos']",
    ),
    ("duplicate id", ROWS + "1\tagain\tpos\n", "my/train.tsv, line 4, field 'id': duplicate example id '1'"),
]


@pytest.mark.parametrize("what, rows, message", ROW_BROKEN, ids=[b[0] for b in ROW_BROKEN])
def test_row_problems_found_with_data(setup, tmp_path, capsys, what, rows, message):
    root, write = setup
    (root / "my" / "train.tsv").write_text(rows)
    cfg = write()
    assert main(["check-config", str(cfg)]) == 0  # rows are read only with --data, and it says so
    assert "rows not read: add --data" in capsys.readouterr().err
    rc, check, run_rc, run_err = _both(capsys, cfg, tmp_path, data=True)
    assert (rc, run_rc) == (2, 2) and message in check and check.strip() == run_err.strip()


def test_non_numeric_regression_label_found_with_data(setup, tmp_path, capsys):
    root, write = setup
    (root / "my" / "reg.tsv").write_text("id\treview\tscore\n1\tgood\t4.5\n2\tbad\tn/a\n")
    cfg = write(
        task={
            "head": "regression",
            "metrics": ["pearson"],
            "fields": {"id": "id", "text_a": "review", "label": "score"},
            "splits": {"train": "my/reg.tsv"},
        }
    )
    rc, check, run_rc, run_err = _both(capsys, cfg, tmp_path, data=True)
    assert (rc, run_rc) == (2, 2)
    assert "my/reg.tsv, line 3, field 'score': regression label 'n/a' is not a number" in check
    assert check.strip() == run_err.strip()


def test_every_file_problem_reported_at_once(setup, tmp_path, capsys):
    """Item 8: all files are checked before any is tokenised, and every problem is named."""
    root, write = setup
    (root / "my" / "dev.tsv").write_text("id\ttext\tsentiment\n1\tx\tpos\n")
    absent = tmp_path / "elsewhere" / "train.tsv"
    cfg = write(task={**TASK, "splits": {"train": str(absent), "dev": "my/dev.tsv", "test": "my/test.tsv"}}, entry=None)
    rc, check, run_rc, run_err = _both(capsys, cfg, tmp_path)
    assert (rc, run_rc) == (2, 2) and check.strip() == run_err.strip()
    assert "data: 2 problems:" in check
    assert f"{absent}: file not found (task My, split train)\n" in check  # absolute: no data.root hint
    assert "my/dev.tsv, line 1, field 'review': header has no column 'review' for text_a" in check
    assert not (tmp_path / "cache").exists()


def test_headerless_file_columns_checked(setup, tmp_path, capsys):
    root, write = setup
    (root / "my" / "nohead.tsv").write_text("1\tgood\tpos\n2\tbad\n")
    task = {**TASK, "splits": {"train": {"path": "my/nohead.tsv", "columns": ["id", "review", "sentiment"]}}}
    assert main(["check-config", str(write(task=task))]) == 0
    capsys.readouterr()
    task["splits"]["train"]["columns"] = ["id", "review", "sentiment", "extra"]  # one column too many
    assert main(["check-config", str(write(task=task))]) == 2
    assert (
        "nohead.tsv, line 1: expected 4 fields ['id', 'review', 'sentiment', 'extra'], found 3"
        in capsys.readouterr().err
    )


# ------------------------------------------------------------------------------ mtkd tasks --tasks-file
def test_tasks_command_prints_a_tasks_file_resolved(tmp_path, capsys):
    f = tmp_path / "mine.yaml"
    f.write_text(yaml.safe_dump({"My": TASK}))
    assert main(["tasks", "--tasks-file", str(f)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# built-in GLUE tasks (CoLA, SST-2") and f"# tasks_file {f}" in out
    printed = yaml.safe_load(out)
    assert "SST-2" in printed and printed["My"]["dropout"] == 0.1  # defaults filled in
    assert printed["My"]["splits"]["train"] == {"path": "my/train.tsv", "format": "tsv"}
    assert main(["tasks", "--tasks-file", str(f), "My", "STS-B"]) == 0
    assert set(yaml.safe_load(capsys.readouterr().out)) == {"My", "STS-B"}
    assert main(["tasks", "--tasks-file", str(f), "my"]) == 2
    assert "no task 'my' (did you mean 'My'?)" in capsys.readouterr().err
    f.write_text(yaml.safe_dump({"My": {**TASK, "splits": {"trian": "x.tsv"}}}))  # every task is validated
    assert main(["tasks", "--tasks-file", str(f)]) == 2
    assert "split name 'trian': a split is train, dev, dev_<name>" in capsys.readouterr().err
    assert main(["tasks"]) == 0  # without a file: the GLUE tasks, as YAML
    assert list(yaml.safe_load(capsys.readouterr().out))[:2] == ["CoLA", "SST-2"]


# ------------------------------------------------------------------------------ the documented task format
def _readme_section() -> str:
    """docs/tasks.md, "Custom tasks": the user docs' task format."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "tasks.md").read_text(encoding="utf-8")
    return text[text.index("## Custom tasks") : text.index("**Ranking.**")]


def test_readme_documents_every_key_of_the_task_format():
    from mtkd.tasks import _SPLIT_KEYS, _TASK_KEYS, FIELD_ROLES, METRICS, FileFormat, HeadKind, task_option_keys

    section = _readme_section()
    keys = set(_TASK_KEYS) | set(_SPLIT_KEYS) | set(FIELD_ROLES) | set(task_option_keys())
    words = set(METRICS) | {h.value for h in HeadKind} | {f.value for f in FileFormat}
    missing = sorted(k for k in keys | words if not re.search(rf"\b{re.escape(k)}\b", section))
    assert not missing, f"docs/tasks.md custom-task section does not mention {missing}"
    for phrase in ("dev_<name>", "null", "mtkd tasks --tasks-file", "mtkd check-config CONFIG --data"):
        assert phrase in section


def test_readme_examples_are_valid(tmp_path):
    """The section's YAML examples load: a tasks_file using every key, and a config's task entries."""
    from mtkd.config import RunConfig, from_dict
    from mtkd.tasks import load_task_specs

    tasks_yaml, config_yaml = re.findall(r"```yaml\n(.*?)```", _readme_section(), re.S)
    f = tmp_path / "my_tasks.yaml"
    f.write_text(tasks_yaml)
    specs = load_task_specs(None, f)
    mine = yaml.safe_load(tasks_yaml)
    used = {k for n in mine for k in specs[n].to_dict()} | {
        k for n in mine for s in specs[n].to_dict()["splits"].values() for k in s
    }
    assert used >= {
        "head",
        "labels",
        "metrics",
        "dropout",
        "max_seq_len",
        "note",
        "label_range",
        "positive_label",
        "head_of",
        "columns",
        "fields",
        "skip_malformed",
        "report_as",
        "format",
        "path",
    }
    cfg = from_dict(RunConfig, {**yaml.safe_load(config_yaml), "tasks_file": str(f)})
    resolved = load_task_specs({n: o.override for n, o in cfg.tasks.items()}, cfg.tasks_file)
    assert cfg.tasks["Reviews"].train_cap == 5000 and "dev_ood" not in resolved["Reviews"].splits
    assert resolved["Reviews"].splits["train"].format.value == "csv"  # merged: the format is kept


def test_help_says_config_errors_stop_at_the_first_and_file_problems_are_all_listed(capsys):
    with pytest.raises(SystemExit):
        main(["check-config", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "naming every problem found" not in text
    assert "stops at the first one" in text and "the problems with the split files are all listed in one error" in text
