"""Refusals before any work (issue 12): names that would become paths, out-of-range config values
(each naming its key), max_seq_len beyond the encoder's positions, an --output-dir that is a file,
and example ids that would break the submission TSVs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import tiny_config
from mtkd.cli import main
from mtkd.config import load_config
from mtkd.errors import ConfigError, DataError
from mtkd.metrics import write_submission_file
from mtkd.encoders import check_max_seq_len, max_positions
from mtkd.tasks import GLUE_TASK_NAMES, check_name, glue_tasks, load_task_specs

MY_TASK = {"head": "classification", "labels": ["0", "1"], "fields": {"text_a": "sentence", "label": "label"},
           "splits": {"train": "SST-2/train.tsv", "dev": "SST-2/dev.tsv"}}


def _write(path: Path, raw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(raw))
    return path


# ------------------------------------------------------------------------------ names -> paths
def test_glue_and_pseudo_task_names_are_safe():
    for name in GLUE_TASK_NAMES + ("MNLI-m", "MNLI-mm", "SST-2+unlabeled", "my_task.v2"):
        assert check_name(name, "x") == name
    for spec in glue_tasks().values():  # every built-in split name and report_as passes too
        for split in spec.splits:
            check_name(spec.report_name(split), "x")


@pytest.mark.parametrize("bad", ["/tmp/victim", "../x", "..", ".", "a/b", "a\\b", "", " SST-2", "-x", "a\tb", "x\n"])
def test_unsafe_names_refused(bad):
    with pytest.raises(ConfigError, match="is not a valid name"):
        check_name(bad, "tasks")


def test_config_task_name_that_is_a_path_refused_at_load(tmp_path):
    cfg = _write(tmp_path / "cfg.yaml", {"tasks": {"../evil": {}}})
    with pytest.raises(ConfigError, match=r"cfg.yaml: tasks: task name: '\.\./evil' is not a valid name"):
        load_config(cfg)
    for key in ("finetune_tasks=[/abs]", "kd.teacher_tasks=[../x]", "kd.select_by=[a/b]"):
        with pytest.raises(ConfigError, match=key.split("=")[0].replace(".", r"\.") + r"\[0\]"):
            load_config(cfg, ["~tasks", key])


def test_tasks_file_name_that_is_absolute_path_refused_before_anything_runs(tmp_path, tiny_encoder, capsys):
    """Before: the run wrote under /abs/path and deleted its checkpoints/ with exit 0."""
    victim = tmp_path / "victim"
    (victim / "checkpoints").mkdir(parents=True)
    (victim / "checkpoints" / "keep.txt").write_text("mine")
    tasks_file = _write(tmp_path / "mine.yaml", {"Good": MY_TASK, str(victim): MY_TASK})
    raw = tiny_config(tmp_path / "glue", tiny_encoder, tmp_path / "cache", tasks=())
    raw.update(tasks_file=str(tasks_file), tasks={"Good": {}})
    cfg = _write(tmp_path / "cfg.yaml", raw)
    assert main(["run", str(cfg), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"tasks_file '{tasks_file}': task name: '{victim}' is not a valid name" in err
    assert (victim / "checkpoints" / "keep.txt").read_text() == "mine"
    assert not (victim / "model").exists()


def test_report_as_and_split_names_checked(tmp_path):
    f = _write(tmp_path / "mine.yaml", {"Mine": {**MY_TASK, "splits": {"dev": {"path": "d.tsv", "report_as": "../../x"}}}})
    with pytest.raises(ConfigError, match=r"tasks\.Mine \(defined in .*mine\.yaml\): task 'Mine', split 'dev', "
                                          r"field 'report_as': '\.\./\.\./x' is not a valid name"):
        load_task_specs({"Mine": {}}, f)
    with pytest.raises(ConfigError, match=r"split name: '\.\./cache' is not a valid name"):
        load_task_specs({"SST-2": {"splits": {"../cache": "x.tsv"}}})
    with pytest.raises(ConfigError, match=r"report_as'?: '/tmp/SST-2' is not a valid name"):
        load_task_specs({"SST-2": {"splits": {"test": {"report_as": "/tmp/SST-2"}}}})


# ------------------------------------------------------------------------------ value ranges
@pytest.mark.parametrize("override, message", [
    ("mtl.checkpoint_every=0", "mtl.checkpoint_every must be a positive integer, got 0"),
    ("finetune.log_every=0", "finetune.log_every must be a positive integer, got 0"),
    ("mtl.max_steps=-5", "mtl.max_steps must be a positive integer, got -5"),
    ("mtl.max_steps=0", "mtl.max_steps must be a positive integer, got 0"),
    ("finetune.lr=-1e-4", "finetune.lr must be a positive number, got -0.0001"),
    ("mtl.lr=.nan", "mtl.lr must be a positive number, got nan"),
    ("mtl.batch_size=0", "mtl.batch_size must be a positive integer, got 0"),
    ("finetune.epochs=0", "finetune.epochs must be a positive number, got 0.0"),
    ("mtl.epochs=.inf", "mtl.epochs must be a positive number, got inf"),
    ("mtl.warmup=1", "mtl.warmup must be a number in [0, 1), got 1.0"),
    ("mtl.grad_clip=-1", "mtl.grad_clip must be a number >= 0, got -1.0"),
    ("mtl.temperature=0", "mtl.temperature must be a positive number, got 0.0"),
    ("mtl.keep_checkpoints=-1", "mtl.keep_checkpoints must be an integer >= 0, got -1"),
    ("mtl.epoch_size=0", "mtl.epoch_size must be a positive integer, got 0"),
    ("encoder.num_hidden_layers=0", "encoder.num_hidden_layers must be a positive integer, got 0"),
    ("encoder.dropout=1.0", "encoder.dropout must be a number in [0, 1), got 1.0"),
    ("kd.student.num_hidden_layers=0", "kd.student.num_hidden_layers must be a positive integer, got 0"),
    ("kd.student.dropout=-0.1", "kd.student.dropout must be a number in [0, 1), got -0.1"),
    ("kd.soft_weight=1.5", "kd.soft_weight must be a number in [0, 1], got 1.5"),
    ("kd.temperature=0", "kd.temperature must be a positive number, got 0.0"),
    ("kd.top_k=0", "kd.top_k must be a positive integer, got 0"),
    ("kd.candidates=[{dropout: 2}]", "kd.candidates[0].dropout must be a number in [0, 1), got 2.0"),
    ("predict.max_tokens=0", "predict.max_tokens must be a positive integer, got 0"),
    ("tasks.SST-2.train_cap=0", "tasks.SST-2.train_cap must be a positive integer, got 0"),
])
def test_out_of_range_values_name_their_key(tmp_path, override, message):
    cfg = _write(tmp_path / "cfg.yaml", {"tasks": {"SST-2": {}}})
    with pytest.raises(ConfigError) as e:
        load_config(cfg, [override])
    assert str(e.value) == f"{cfg}: {message}"


def test_edge_values_accepted():
    cfg = load_config(None, ["mtl.warmup=0", "mtl.grad_clip=0", "kd.soft_weight=1", "kd.soft_weight=0",
                             "mtl.keep_checkpoints=0", "mtl.bucket=0", "encoder.dropout=0"])
    assert cfg.mtl.warmup == 0 and cfg.kd.soft_weight == 0


def test_cli_refuses_zero_checkpoint_every_before_start(tmp_path, capsys):
    """Before: ZeroDivisionError after start-up (data read, model built)."""
    cfg = _write(tmp_path / "cfg.yaml", {"tasks": {"SST-2": {}}})
    out = tmp_path / "out"
    assert main(["mtl", str(cfg), "--output-dir", str(out), "--set", "mtl.checkpoint_every=0"]) == 2
    assert capsys.readouterr().err.strip() == f"mtkd: error: {cfg}: mtl.checkpoint_every must be a positive integer, got 0"
    assert not out.exists()


def test_max_seq_len_against_position_embeddings():
    from transformers import BertConfig, RobertaConfig

    bert = BertConfig(max_position_embeddings=128)
    assert max_positions(bert) == 128
    check_max_seq_len(bert, 128, "cfg.yaml")
    with pytest.raises(ConfigError, match=r"cfg.yaml: data.max_seq_len is 129, but the encoder \(bert\) takes at most 128 tokens"):
        check_max_seq_len(bert, 129, "cfg.yaml")
    roberta = RobertaConfig(max_position_embeddings=514, pad_token_id=1)  # roberta-base: 512 tokens
    assert max_positions(roberta) == 512
    check_max_seq_len(roberta, 512, "cfg.yaml")
    with pytest.raises(ConfigError, match=r"takes at most 512 tokens \(max_position_embeddings 514"):
        check_max_seq_len(roberta, 514, "cfg.yaml")


def test_predict_on_roberta_style_encoder_cuts_at_usable_positions(tiny_encoder):
    """Before: predict cut at max_position_embeddings (34) and crashed on a long text (index out of range)."""
    import torch
    from transformers import AutoTokenizer, RobertaConfig, RobertaModel

    from mtkd.model import MTModel

    tok = AutoTokenizer.from_pretrained(str(tiny_encoder))
    torch.manual_seed(0)
    enc = RobertaModel(RobertaConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=34, pad_token_id=tok.pad_token_id),
                       add_pooling_layer=False)
    model = MTModel(enc, {"SST-2": glue_tasks()["SST-2"]}, tok)
    out = model.predict("SST-2", ["word " * 200, "short"])
    assert len(out) == 2


# ------------------------------------------------------------------------------ --output-dir is a file
@pytest.mark.parametrize("command", [
    ["run", "CFG"], ["mtl", "CFG"], ["finetune", "CFG"], ["evaluate", "CFG", "--model", "M"], ["predict", "CFG", "--model", "M"],
])
def test_output_dir_that_is_a_file(tmp_path, capsys, command):
    cfg = _write(tmp_path / "cfg.yaml", {"tasks": {"SST-2": {}}})
    target = tmp_path / "results.txt"
    target.write_text("precious")
    args = [str(cfg) if a == "CFG" else str(tmp_path / "model") if a == "M" else a for a in command]
    assert main(args + ["--output-dir", str(target)]) == 2
    assert capsys.readouterr().err.strip() == f"mtkd: error: --output-dir {target} is a file, not a folder"
    assert target.read_text() == "precious"
    assert main(args + ["--output-dir", str(target / "sub")]) == 2
    assert f"--output-dir {target / 'sub'}: {target} is a file, not a folder" in capsys.readouterr().err


# ------------------------------------------------------------------------------ submission ids
@pytest.mark.parametrize("bad", ["a\tb", "a\nb", "a\rb"])
def test_submission_refuses_ids_that_break_the_tsv(tmp_path, bad):
    spec = glue_tasks()["SST-2"]
    path = tmp_path / "SST-2.tsv"
    with pytest.raises(DataError, match="example id " + repr(bad).replace("\\", "\\\\") + " holds a tab or line break"):
        write_submission_file(path, ["1", bad, "3"], np.array([0, 1, 0]), spec)
    assert not path.exists()  # nothing half-written
    write_submission_file(path, ["1", "2 x", "3"], np.array([0, 1, 0]), spec)
    assert path.read_text() == "index\tprediction\n1\t0\n2 x\t1\n3\t0\n"


def test_json_test_split_with_newline_id_refused_at_submission(tmp_path):
    """JSON {id: record} files can carry such ids; the reader keeps them, the TSV writer refuses them."""
    import json

    from mtkd.data import read_split

    (tmp_path / "test.json").write_text(json.dumps({"7": {"s": "fine"}, "8\nx\t1": {"s": "bad"}}))
    spec = load_task_specs({"Mine": {}}, _write(tmp_path / "t.yaml", {"Mine": {**MY_TASK, "fields": {"text_a": "s"},
                                                                             "splits": {"test": "test.json"}}}))["Mine"]
    raw = read_split(spec, "test", tmp_path)
    with pytest.raises(DataError, match=r"Mine.tsv: example id '8\\nx\\t1' holds a tab or line break"):
        write_submission_file(tmp_path / "Mine.tsv", raw.ids, np.zeros(len(raw.ids), dtype=int), spec)


def test_run_refuses_max_seq_len_beyond_the_encoder_before_training(glue_root, tiny_encoder, tmp_path, capsys):
    cfg = tiny_config(glue_root, tiny_encoder, tmp_path / "cache", tasks=("SST-2",), stages=["mtl"])
    cfg["data"]["max_seq_len"] = 200  # the tiny encoder has 128 positions
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "data.max_seq_len is 200" in err and "at most 128 tokens" in err and str(tiny_encoder) in err
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------ missing files (issue 14, item 8)
def test_missing_file_hint_only_for_relative_paths(tmp_path):
    from mtkd.data import check_split, read_split

    spec = load_task_specs({"Mine": {}}, _write(tmp_path / "t.yaml", {"Mine": {
        **MY_TASK, "splits": {"train": "rel/train.tsv", "dev": str(tmp_path / "abs" / "dev.tsv")}}}))["Mine"]
    for read in (read_split, check_split):
        with pytest.raises(DataError) as e:
            read(spec, "train", tmp_path / "root")
        assert str(e.value) == (f"{tmp_path / 'root' / 'rel' / 'train.tsv'}: file not found (task Mine, split train; "
                                f"set data.root or $MTKD_DATA_ROOT)")
        with pytest.raises(DataError) as e:
            read(spec, "dev", tmp_path / "root")
        assert str(e.value) == f"{tmp_path / 'abs' / 'dev.tsv'}: file not found (task Mine, split dev)"


def test_check_files_names_every_problem_and_notes_absent_test_files(tmp_path):
    from mtkd.data import check_files

    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text("sentence\tlabel\nnice\t1\n")
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabels\nnice\t1\n")
    specs = load_task_specs({"SST-2": {}, "RTE": {"splits": {"test": None}}})
    with pytest.raises(DataError) as e:
        check_files(specs, tmp_path)
    lines = str(e.value).split("\n")
    assert lines[0] == "data: 3 problems:"
    assert "SST-2/dev.tsv, line 1, field 'label': header has no column 'label' for label (task SST-2) " \
           "(did you mean 'labels'?)" in lines[1]
    assert [ln.strip().split(":")[0] for ln in lines[2:]] == [str(tmp_path / "RTE" / "train.tsv"), str(tmp_path / "RTE" / "dev.tsv")]
    (tmp_path / "SST-2" / "dev.tsv").write_text("sentence\tlabel\nnice\t1\n")
    notes = check_files({"SST-2": specs["SST-2"]}, tmp_path)  # the test file is absent: a note, no error
    assert notes == [f"{tmp_path / 'SST-2' / 'test.tsv'}: file not found (task SST-2, split test; set data.root or $MTKD_DATA_ROOT)"]
    assert check_files({"SST-2": specs["SST-2"]}, tmp_path, splits=("train",)) == []


def test_check_split_reads_the_start_of_the_file_only(tmp_path, monkeypatch):
    """The header and first row are checked; a bad label further down is left to --data / the run."""
    from mtkd import data as data_mod
    from mtkd.data import check_split, read_split

    monkeypatch.setattr(data_mod, "HEAD_BYTES", 64)
    (tmp_path / "SST-2").mkdir()
    rows = "".join(f"sentence {i}\t{i % 2}\n" for i in range(50)) + "last\tmaybe\n"
    (tmp_path / "SST-2" / "train.tsv").write_text("sentence\tlabel\n" + rows)
    spec = glue_tasks()["SST-2"]
    check_split(spec, "train", tmp_path)
    with pytest.raises(DataError, match=r"line 52, field 'label': unknown label 'maybe'"):
        read_split(spec, "train", tmp_path)
    (tmp_path / "SST-2" / "train.tsv").write_text("sentence\tlabel\nfirst\tmaybe\n" + rows)
    with pytest.raises(DataError, match=r"line 2, field 'label': unknown label 'maybe'"):
        check_split(spec, "train", tmp_path)  # the first row is checked in full
