"""Reading (every GLUE layout quirk, custom formats, strict refusals), tokenising + cache, batching."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

import mtkd.data as data_mod
from conftest import NEG, POS
from mtkd.data import collate, encode_split, read_split, subsample
from mtkd.errors import DataError, MtkdError
from mtkd.inference import length_batches
from mtkd.tasks import HeadKind, glue_tasks, load_task_specs, task_from_dict

GLUE = glue_tasks()


def _positive(text: str) -> bool:
    words = set(text.replace('"', " ").split())
    assert bool(words & set(POS)) != bool(words & set(NEG)), text
    return bool(words & set(POS))


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8-sig").splitlines()


def _task(tmp_path, name="T", files=None, **d) -> tuple:
    """A custom task whose files are written into tmp_path; returns (spec, {split: path})."""
    paths = {}
    splits = {}
    for split, (fname, content) in (files or {}).items():
        p = tmp_path / fname
        if isinstance(content, bytes):
            p.write_bytes(content)
        else:
            p.write_text(content, encoding="utf-8")
        paths[split] = p
        splits[split] = {"path": str(p), **d.pop(f"{split}_extra", {})}
    d.setdefault("head", "classification")
    d.setdefault("labels", ["neg", "pos"])
    d.setdefault("fields", {"id": "id", "text_a": "a", "label": "y"})
    return task_from_dict(name, {**d, "splits": splits}), paths


# ============================================================================ GLUE readers
def test_cola_train_has_no_header_and_uses_the_yaml_columns(glue_root):
    raw = read_split(GLUE["CoLA"], "train", glue_root)
    lines = _lines(glue_root / "CoLA" / "train.tsv")
    assert len(raw) == len(lines) == 48  # the first line is data, not a header
    assert raw.ids == [str(i) for i in range(48)]  # no id column: positions
    assert raw.text_b is None and raw.skipped == []
    assert raw.text_a == [ln.split("\t")[3] for ln in lines]
    assert raw.labels == [int(ln.split("\t")[1]) for ln in lines]
    assert raw.labels == [int(_positive(t)) for t in raw.text_a]
    assert set(raw.labels) == {0, 1}


def test_cola_test_has_index_sentence_header_and_no_labels(glue_root):
    raw = read_split(GLUE["CoLA"], "test", glue_root)
    assert len(raw) == 12
    assert raw.ids == [str(i) for i in range(12)]
    assert raw.labels is None and raw.text_b is None
    assert raw.text_a == [ln.split("\t")[1] for ln in _lines(glue_root / "CoLA" / "test.tsv")[1:]]


def test_sst2_keeps_text_verbatim_and_maps_labels(glue_root):
    raw = read_split(GLUE["SST-2"], "dev", glue_root)
    assert len(raw) == 16
    assert all(t.endswith(" . ") for t in raw.text_a)  # text is not stripped
    assert raw.labels == [int(_positive(t)) for t in raw.text_a]


def test_mrpc_bom_header_and_bare_quotes(glue_root):
    path = glue_root / "MRPC" / "train.tsv"
    assert path.read_bytes().startswith(b"\xef\xbb\xbfQuality\t")
    raw = read_split(GLUE["MRPC"], "train", glue_root)
    assert len(raw) == 48
    assert all(a.startswith('He said " the ') for a in raw.text_a)  # the bare quote stays, nothing swallowed
    assert raw.labels == [int(_positive(b)) for b in raw.text_b]
    test = read_split(GLUE["MRPC"], "test", glue_root)
    assert len(test) == 12 and test.labels is None and test.ids == [str(i) for i in range(12)]


def test_mrpc_quote_spanning_tabs_and_lines_is_not_treated_as_quoting(tmp_path):
    root = tmp_path / "glue"
    (root / "MRPC").mkdir(parents=True)
    (root / "MRPC" / "train.tsv").write_text(
        "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        '1\t1\t2\t" the witness\tsaid " no\n'
        '0\t3\t4\tan "open quote\tand "another\n',
        encoding="utf-8",
    )
    raw = read_split(GLUE["MRPC"], "train", root)
    assert raw.text_a == ['" the witness', 'an "open quote']
    assert raw.text_b == ['said " no', 'and "another']
    assert raw.labels == [1, 0]


def test_stsb_ten_columns_float_scores_and_unlabelled_test(glue_root):
    raw = read_split(GLUE["STS-B"], "train", glue_root)
    lines = _lines(glue_root / "STS-B" / "train.tsv")
    assert len(lines[0].split("\t")) == 10
    assert len(raw) == 48 and raw.ids == [str(i) for i in range(48)]
    assert all(isinstance(y, float) for y in raw.labels)
    assert raw.labels == [4.5 if _positive(a) else 0.5 for a in raw.text_a]
    assert raw.text_b == [ln.split("\t")[8] for ln in lines[1:]]
    test = read_split(GLUE["STS-B"], "test", glue_root)
    assert len(test) == 12 and test.labels is None and len(test.text_b) == 12


def test_stsb_exact_scores(tmp_path):
    root = tmp_path / "glue"
    (root / "STS-B").mkdir(parents=True)
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2\tscore\n"
    (root / "STS-B" / "dev.tsv").write_text(
        head + "7\tmain\tf\t2012\t0001\tnone\tnone\tA plane.\tA jet.\t5.000\n"
        "9\tmain\tf\t2012\t0002\tnone\tnone\tA man.\tA dog.\t 0.250 \n"
    )
    raw = read_split(GLUE["STS-B"], "dev", root)
    assert raw.ids == ["7", "9"]
    assert raw.labels == [5.0, 0.25]
    assert raw.text_a == ["A plane.", "A man."] and raw.text_b == ["A jet.", "A dog."]


@pytest.mark.parametrize(
    "task,labels",
    [("RTE", ("entailment", "not_entailment")), ("QNLI", ("entailment", "not_entailment")), ("WNLI", ("1", "0"))],
)
def test_pair_tasks_label_names_and_unlabelled_test(glue_root, task, labels):
    spec = GLUE[task]
    raw = read_split(spec, "train", glue_root)
    assert len(raw) == 48 and raw.ids == [str(i) for i in range(48)]
    assert raw.text_a == [f"some premise {i}" for i in range(48)]
    pos_index = spec.labels.index(labels[0])
    assert raw.labels == [pos_index if _positive(b) else 1 - pos_index for b in raw.text_b]
    assert "label" in spec.fields_for("test")  # the test file lacks the column: read without labels
    test = read_split(spec, "test", glue_root)
    assert len(test) == 12 and test.labels is None and len(test.text_b) == 12


def test_ax_diagnostic_is_unlabelled(glue_root):
    raw = read_split(GLUE["AX"], "test", glue_root)
    assert len(raw) == 12 and raw.labels is None
    assert raw.text_a == ["The cat sat."] * 12


MNLI_HEAD = (
    "index\tpromptID\tpairID\tgenre\tsentence1_binary_parse\tsentence2_binary_parse\tsentence1_parse\t"
    "sentence2_parse\tsentence1\tsentence2\tlabel1\tgold_label\n"
)


def test_mnli_labels_by_name_three_classes(tmp_path):
    root = tmp_path / "glue"
    (root / "MNLI").mkdir(parents=True)
    rows = [("10", "neutral"), ("11", "contradiction"), ("12", "entailment"), ("13", "neutral")]
    (root / "MNLI" / "train.tsv").write_text(
        MNLI_HEAD
        + "".join(
            f"{i}\t1\t1n\tfiction\t( a )\t( b )\t(S a)\t(S b)\tpremise {i}\thypothesis {i}\t{y}\t{y}\n" for i, y in rows
        )
    )
    spec = GLUE["MNLI"]
    assert spec.labels == ("contradiction", "entailment", "neutral") and spec.num_outputs == 3
    raw = read_split(spec, "train", root)
    assert raw.ids == ["10", "11", "12", "13"]
    assert raw.labels == [2, 0, 1, 2]
    assert raw.text_a == [f"premise {i}" for i, _ in rows] and raw.text_b == [f"hypothesis {i}" for i, _ in rows]
    # test_matched: the same layout without label columns
    (root / "MNLI" / "test_matched.tsv").write_text(
        MNLI_HEAD.rsplit("\tlabel1", 1)[0]
        + "\n"
        + "".join(f"{i}\t1\t1n\tfiction\t( a )\t( b )\t(S a)\t(S b)\tpremise {i}\thypothesis {i}\n" for i, _ in rows)
    )
    test = read_split(spec, "test_matched", root)
    assert test.labels is None and test.ids == ["10", "11", "12", "13"]


def test_json_object_of_records_id_is_the_key(glue_root):
    spec = load_task_specs(
        {
            "MNLI": {
                "fields": {"text_a": "text_a", "text_b": "text_b", "label": "label"},
                "splits": {"train": {"path": "MNLI/partial/powerfulpromptft_sample/train.json"}},
            }
        }
    )["MNLI"]
    assert spec.splits["train"].format.value == "json"  # guessed from the suffix
    raw = read_split(spec, "train", glue_root)
    recs = json.loads((glue_root / "MNLI/partial/powerfulpromptft_sample/train.json").read_text())
    assert len(raw) == len(recs) == 48
    assert raw.ids == list(recs)
    assert raw.text_a == [r["text_a"] for r in recs.values()]
    assert raw.labels == [spec.labels.index(r["label"]) for r in recs.values()]
    assert set(raw.labels) == {0, 1, 2}


def test_json_keys_need_not_be_contiguous(tmp_path):
    recs = {
        "a7": {"text_a": "x", "text_b": "y", "label": "neutral"},
        "3": {"text_a": "p", "text_b": "q", "label": "entailment"},
    }
    (tmp_path / "d.json").write_text(json.dumps(recs))
    spec = load_task_specs(
        {
            "MNLI": {
                "fields": {"text_a": "text_a", "text_b": "text_b", "label": "label"},
                "splits": {"train": str(tmp_path / "d.json")},
            }
        }
    )["MNLI"]
    raw = read_split(spec, "train")
    assert raw.ids == ["a7", "3"] and raw.labels == [2, 1] and raw.text_b == ["y", "q"]


def test_json_list_of_records_uses_positions_as_ids(tmp_path):
    spec, _ = _task(
        tmp_path,
        files={"train": ("l.json", json.dumps([{"a": "one", "y": "pos"}, {"a": "two", "y": "neg"}]))},
        fields={"text_a": "a", "label": "y"},
    )
    raw = read_split(spec, "train")
    assert raw.ids == ["0", "1"] and raw.text_a == ["one", "two"] and raw.labels == [1, 0]


def test_qqp_missing_fields_are_skipped_and_reported(tmp_path, caplog):
    root = tmp_path / "glue"
    (root / "QQP").mkdir(parents=True)
    (root / "QQP" / "train.tsv").write_text(
        "id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n"
        "1\t1\t2\tHow?\tWhy?\t0\n"
        "2\t3\t4\tWhat is it\n"  # line 3: missing fields
        "3\t5\t6\tWho?\tWhom?\t1\n"
        "4\t7\t8\tA\tB\t1\textra\n"  # line 5: one too many
        "5\t9\t10\tWhen?\tWhere?\t1\n"
    )
    spec = GLUE["QQP"]
    assert spec.splits["train"].skip_malformed
    raw = read_split(spec, "train", root)
    assert raw.ids == ["1", "3", "5"] and raw.labels == [0, 1, 1]
    assert [line for line, _ in raw.skipped] == [3, 5]
    assert "expected 6 fields" in raw.skipped[0][1] and "found 4" in raw.skipped[0][1]
    assert "found 7" in raw.skipped[1][1]
    assert "skipped 2 malformed rows" in caplog.text
    # without skip_malformed the same file is refused at line 3
    strict = load_task_specs({"QQP": {"splits": {"train": {"skip_malformed": False}}}})["QQP"]
    with pytest.raises(DataError, match=r"train\.tsv, line 3: expected 6 fields .* found 4"):
        read_split(strict, "train", root)


def test_jsonl_custom_task(tmp_path):
    content = '{"id": "q1", "a": "first", "y": "pos"}\n\n{"id": "q2", "a": "second", "y": "neg", "other": 3}\n'
    spec, _ = _task(tmp_path, files={"train": ("t.jsonl", content)})
    assert spec.splits["train"].format.value == "jsonl"
    raw = read_split(spec, "train")
    assert raw.ids == ["q1", "q2"] and raw.text_a == ["first", "second"] and raw.labels == [1, 0]


def test_csv_custom_task_with_rfc4180_quoting(tmp_path):
    content = 'id,a,b,y\r\nx1,"hello, world","say ""hi""",pos\r\nx2,"two\nlines",plain,neg\r\n'
    spec, _ = _task(
        tmp_path, files={"train": ("t.csv", content)}, fields={"id": "id", "text_a": "a", "text_b": "b", "label": "y"}
    )
    raw = read_split(spec, "train")
    assert raw.ids == ["x1", "x2"]
    assert raw.text_a == ["hello, world", "two\nlines"]
    assert raw.text_b == ['say "hi"', "plain"]
    assert raw.labels == [1, 0]


def test_tsv_crlf_line_endings(tmp_path):
    spec, _ = _task(tmp_path, files={"train": ("t.tsv", "id\ta\ty\r\n1\tone\tpos\r\n2\ttwo\tneg\r\n")})
    raw = read_split(spec, "train")
    assert raw.ids == ["1", "2"] and raw.text_a == ["one", "two"] and raw.labels == [1, 0]


def test_fingerprint_is_sha256_of_the_bytes(glue_root):
    import hashlib

    raw = read_split(GLUE["SST-2"], "train", glue_root)
    assert raw.fingerprint == hashlib.sha256((glue_root / "SST-2" / "train.tsv").read_bytes()).hexdigest()


def test_data_root_from_environment(glue_root, monkeypatch):
    monkeypatch.setenv("MTKD_DATA_ROOT", str(glue_root))
    assert len(read_split(GLUE["RTE"], "dev")) == 16


# ============================================================================ refusals
def _err(spec, split="train", root=None) -> DataError:
    with pytest.raises(DataError) as ei:
        read_split(spec, split, root)
    return ei.value


def test_missing_file_names_path_task_and_split(tmp_path):
    e = _err(GLUE["RTE"], "dev", tmp_path)
    assert str(tmp_path / "RTE" / "dev.tsv") in str(e)
    assert "file not found" in str(e) and "RTE" in str(e) and "dev" in str(e)


def test_unknown_split_is_refused():
    with pytest.raises(DataError, match=r"has no split 'validation'.*'train', 'dev', 'test'"):
        read_split(GLUE["RTE"], "validation")


@pytest.mark.parametrize("content", [b"", b"  \n\n\t\n"])
def test_empty_file(tmp_path, content):
    spec, paths = _task(tmp_path, files={"train": ("t.tsv", content)})
    e = _err(spec)
    assert str(e) == f"{paths['train']}: file is empty"


def test_header_only_file_has_no_data_rows(tmp_path):
    spec, paths = _task(tmp_path, files={"train": ("t.tsv", "id\ta\ty\n")})
    assert str(_err(spec)) == f"{paths['train']}: file has no data rows"


def test_header_not_matching_the_task(tmp_path):
    spec, paths = _task(tmp_path, files={"train": ("t.tsv", "id\ttext\ty\n1\tx\tpos\n")})
    e = _err(spec)
    assert e.line == 1 and e.field == "a"
    assert str(e).startswith(f"{paths['train']}, line 1, field 'a': header has no column 'a' for text_a")
    assert "['id', 'text', 'y']" in str(e)


def test_glue_file_with_wrong_header(tmp_path):
    root = tmp_path / "glue"
    (root / "SST-2").mkdir(parents=True)
    (root / "SST-2" / "train.tsv").write_text("sentence\tlabels\nnice\t1\n")
    e = _err(GLUE["SST-2"], "train", root)
    assert "header has no column 'label' for label (task SST-2)" in str(e) and "line 1" in str(e)


@pytest.mark.parametrize("row,found", [("2\tonly", 2), ("2\tx\tpos\tsurplus", 4), ("", 1)])
def test_row_with_wrong_field_count(tmp_path, row, found):
    spec, paths = _task(tmp_path, files={"train": ("t.tsv", f"id\ta\ty\n1\tfine\tpos\n{row}\n3\tz\tneg\n")})
    e = _err(spec)
    assert e.line == 3
    assert str(e) == f"{paths['train']}, line 3: expected 3 fields ['id', 'a', 'y'], found {found}"


def test_cola_row_with_too_few_fields(tmp_path):
    root = tmp_path / "glue"
    (root / "CoLA").mkdir(parents=True)
    (root / "CoLA" / "train.tsv").write_text("gj04\t1\t\tok .\ngj04\t0\tno tab here\n")
    e = _err(GLUE["CoLA"], "train", root)
    assert e.line == 2 and "expected 4 fields ['source', 'label', 'original_label', 'sentence'], found 3" in str(e)


def test_unknown_label(tmp_path):
    spec, paths = _task(tmp_path, files={"train": ("t.tsv", "id\ta\ty\n1\tx\tpos\n2\ty\tpositive\n")})
    e = _err(spec)
    assert e.line == 3 and e.field == "y"
    assert "unknown label 'positive'; task T expects one of ['neg', 'pos']" in str(e)


def test_unknown_label_in_json_names_the_record(tmp_path):
    recs = {
        "0": {"text_a": "a", "text_b": "b", "label": "entailment"},
        "17": {"text_a": "a", "text_b": "b", "label": "maybe"},
    }
    (tmp_path / "d.json").write_text(json.dumps(recs))
    spec = load_task_specs(
        {
            "MNLI": {
                "fields": {"text_a": "text_a", "text_b": "text_b", "label": "label"},
                "splits": {"train": str(tmp_path / "d.json")},
            }
        }
    )["MNLI"]
    e = _err(spec)
    assert "record '17'" in str(e) and "unknown label 'maybe'" in str(e) and str(tmp_path / "d.json") in str(e)


@pytest.mark.parametrize(
    "value,what",
    [
        ("high", "is not a number"),
        ("nan", "is not finite"),
        ("NaN", "is not finite"),
        ("inf", "is not finite"),
        ("", "is not a number"),
    ],
)
def test_bad_regression_label(tmp_path, value, what):
    spec, paths = _task(
        tmp_path, files={"train": ("t.tsv", f"id\ta\ty\n1\tx\t3.5\n2\ty\t{value}\n")}, head="regression", labels=[]
    )
    e = _err(spec)
    assert e.line == 3 and e.field == "y"
    assert f"regression label {value!r} {what}" in str(e) and str(paths["train"]) in str(e)


@pytest.mark.parametrize("a,b,field", [("", "ok", "a"), ("   ", "ok", "a"), ("ok", "", "b")])
def test_empty_text(tmp_path, a, b, field):
    spec, paths = _task(
        tmp_path,
        files={"train": ("t.tsv", f"id\ta\tb\ty\n1\tx\tz\tpos\n2\t{a}\t{b}\tneg\n")},
        fields={"id": "id", "text_a": "a", "text_b": "b", "label": "y"},
    )
    e = _err(spec)
    assert str(e) == f"{paths['train']}, line 3, field {field!r}: empty text"


def test_invalid_utf8_reports_the_line(tmp_path):
    content = b"id\ta\ty\n1\tfine\tpos\n" + b"2\tbad \xff\xfe byte\tneg\n3\tz\tpos\n"
    spec, paths = _task(tmp_path, files={"train": ("t.tsv", content)})
    e = _err(spec)
    assert e.line == 3
    assert str(e).startswith(f"{paths['train']}, line 3: bytes are not valid UTF-8")


def test_latin1_file_is_refused_not_misread(tmp_path):
    spec, _ = _task(tmp_path, files={"train": ("t.tsv", "id\ta\ty\n1\tcafé\tpos\n".encode("latin-1"))})
    assert _err(spec).line == 2


def test_duplicate_ids_tsv(tmp_path):
    spec, paths = _task(tmp_path, files={"train": ("t.tsv", "id\ta\ty\n1\tx\tpos\n2\ty\tneg\n 1\tz\tpos\n")})
    e = _err(spec)
    assert e.line == 4 and e.field == "id"
    assert "duplicate example id '1' (first seen at line 2)" in str(e)


def test_duplicate_ids_jsonl(tmp_path):
    spec, _ = _task(
        tmp_path, files={"train": ("t.jsonl", '{"id": 5, "a": "x", "y": "pos"}\n{"id": "5", "a": "y", "y": "neg"}\n')}
    )
    e = _err(spec)
    assert e.line == 2 and "duplicate example id '5' (first seen at line 1)" in str(e)


def test_duplicate_keys_in_json_object_of_records(tmp_path):
    # json.loads would silently keep the last record; the reader refuses the file instead
    text = '{"0": {"a": "x", "y": "pos"}, "1": {"a": "y", "y": "neg"}, "0": {"a": "z", "y": "neg"}}'
    spec, paths = _task(tmp_path, files={"train": ("d.json", text)}, fields={"text_a": "a", "label": "y"})
    e = _err(spec)
    assert str(paths["train"]) in str(e) and "duplicate JSON key '0'" in str(e) and "duplicate example id" in str(e)


def test_missing_field_in_json_record(tmp_path):
    spec, _ = _task(tmp_path, files={"train": ("t.jsonl", '{"id": 1, "a": "x", "y": "pos"}\n{"id": 2, "y": "neg"}\n')})
    e = _err(spec)
    assert e.line == 2 and e.field == "a" and "missing field for text_a" in str(e)
    spec, _ = _task(tmp_path, files={"train": ("u.jsonl", '{"id": 1, "a": "x", "y": null}\n')})
    assert "missing field for label" in str(_err(spec))


@pytest.mark.parametrize(
    "fname,content,line,what",
    [
        ("bad.jsonl", '{"id": 1, "a": "x", "y": "pos"}\n{"id": 2, "a": \n', 2, "invalid JSON"),
        ("bad2.jsonl", '{"id": 1, "a": "x", "y": "pos"}\n[1, 2]\n', 2, "expected a JSON object, got list"),
        ("bad.json", '{"0": {"a": "x", "y": "pos"},\n "1": }', 2, "invalid JSON"),
        ("bad3.json", '"just a string"', None, "expected a JSON object {id: record} or a list of records"),
        ("bad4.json", '{"0": ["x", "pos"]}', None, "record '0': expected a JSON object, got list"),
        ("big.json", '{"0": {"a": ' + "9" * 5000 + ', "y": "pos"}}', None, "invalid JSON"),
        ("deep.json", "[" * 100_000, None, "invalid JSON"),
    ],
)
def test_malformed_json(tmp_path, fname, content, line, what):
    spec, paths = _task(tmp_path, files={"train": (fname, content)}, fields={"text_a": "a", "label": "y"})
    e = _err(spec)
    assert str(e).startswith(str(paths["train"])) and what in str(e)
    if line is not None:
        assert e.line == line


def test_csv_field_over_the_csv_module_limit_is_a_data_error(tmp_path):
    spec, paths = _task(tmp_path, files={"train": ("t.csv", "id,a,y\n1," + "x" * 200_000 + ",pos\n")})
    e = _err(spec)
    assert str(paths["train"]) in str(e) and "malformed CSV" in str(e)


def test_data_error_is_an_mtkd_error():
    assert issubclass(DataError, MtkdError)
    e = DataError("f.tsv", "boom", line=3, field="x")
    assert str(e) == "f.tsv, line 3, field 'x': boom" and (e.path, e.line, e.field) == ("f.tsv", 3, "x")


# ============================================================================ tokenise + cache
@pytest.fixture(scope="module")
def tokenizer(tiny_encoder):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_encoder)


def _cache_folders(cache: Path) -> list[Path]:
    return sorted(p for p in cache.iterdir() if p.is_dir())


def test_cache_written_once_and_reused(glue_root, tmp_path, tokenizer, monkeypatch):
    cache = tmp_path / "cache"
    spec = GLUE["MRPC"]
    calls = []
    real = data_mod.read_split
    monkeypatch.setattr(data_mod, "read_split", lambda *a, **k: calls.append(a) or real(*a, **k))
    first = encode_split(spec, "train", tokenizer, 32, cache, root=glue_root)
    assert len(calls) == 1
    folders = _cache_folders(cache)
    assert len(folders) == 1 and re.fullmatch(r"MRPC\.train\.[0-9a-f]{16}", folders[0].name)
    assert {p.name for p in folders[0].iterdir()} == {
        "meta.json",
        "input_ids.npy",
        "token_type_ids.npy",
        "offsets.npy",
        "labels.npy",
    }
    mtime = (folders[0] / "input_ids.npy").stat().st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("the cache was not reused")

    monkeypatch.setattr(data_mod, "read_split", boom)
    second = encode_split(spec, "train", tokenizer, 32, cache, root=glue_root)
    assert _cache_folders(cache) == folders and (folders[0] / "input_ids.npy").stat().st_mtime_ns == mtime
    assert second.ids == first.ids
    np.testing.assert_array_equal(second.input_ids, first.input_ids)
    np.testing.assert_array_equal(second.offsets, first.offsets)
    np.testing.assert_array_equal(second.labels, first.labels)
    meta = json.loads((folders[0] / "meta.json").read_text())
    assert meta["n"] == 48 and meta["max_len"] == 32 and meta["task"] == "MRPC" and meta["split"] == "train"


def test_cache_key_changes_with_contents_and_max_len(glue_root, tmp_path, tokenizer):
    cache = tmp_path / "cache"
    spec = GLUE["SST-2"]
    a = encode_split(spec, "dev", tokenizer, 32, cache, root=glue_root)
    b = encode_split(spec, "dev", tokenizer, 16, cache, root=glue_root)
    assert len(_cache_folders(cache)) == 2 and b.meta["max_len"] == 16
    path = glue_root / "SST-2" / "dev.tsv"
    path.write_text(path.read_text() + "an extra great line\t1\n")
    c = encode_split(spec, "dev", tokenizer, 32, cache, root=glue_root)
    assert len(_cache_folders(cache)) == 3
    assert len(a) == 16 and len(c) == 17 and c.fingerprint != a.fingerprint
    assert c.labels[-1] == 1
    # same contents again: the existing cache, no new folder
    encode_split(spec, "dev", tokenizer, 32, cache, root=glue_root)
    assert len(_cache_folders(cache)) == 3


def test_arrays_are_memory_mapped(glue_root, tmp_path, tokenizer):
    enc = encode_split(GLUE["STS-B"], "train", tokenizer, 32, tmp_path / "c", root=glue_root)
    assert isinstance(enc.input_ids, np.memmap) and isinstance(enc.token_type_ids, np.memmap)
    assert isinstance(enc.labels, np.memmap)
    assert enc.input_ids.dtype == np.int32 and enc.token_type_ids.dtype == np.int8 and enc.offsets.dtype == np.int64
    assert enc.labels.dtype == np.float32 and enc.groups is None
    assert enc.offsets[0] == 0 and enc.offsets[-1] == len(enc.input_ids) and len(enc.offsets) == 49


def test_tokens_match_the_tokenizer_and_test_split_has_no_labels(glue_root, tmp_path, tokenizer):
    enc = encode_split(GLUE["RTE"], "test", tokenizer, 64, tmp_path / "c", root=glue_root)
    raw = read_split(GLUE["RTE"], "test", glue_root)
    assert enc.labels is None and enc.ids == raw.ids
    for i in range(len(raw)):
        want = tokenizer(raw.text_a[i], raw.text_b[i], truncation=True, max_length=64)
        s, e = enc.offsets[i], enc.offsets[i + 1]
        assert enc.input_ids[s:e].tolist() == want["input_ids"]
        assert enc.token_type_ids[s:e].tolist() == want["token_type_ids"]
    assert not (tmp_path / "c" / next((tmp_path / "c").iterdir()).name / "labels.npy").exists()


@pytest.mark.parametrize("pair", [False, True])
def test_truncation_cuts_tokens_never_examples(tmp_path, tokenizer, pair):
    long = " ".join(["word"] * 40)
    texts = ["short one", long, "tiny", long + " more", "two words"]
    if pair:
        rows = "".join(f"{i}\t{t}\t{t}\t{'pos' if i % 2 else 'neg'}\n" for i, t in enumerate(texts))
        spec, _ = _task(
            tmp_path,
            files={"train": ("t.tsv", "id\ta\tb\ty\n" + rows)},
            fields={"id": "id", "text_a": "a", "text_b": "b", "label": "y"},
        )
    else:
        rows = "".join(f"{i}\t{t}\t{'pos' if i % 2 else 'neg'}\n" for i, t in enumerate(texts))
        spec, _ = _task(tmp_path, files={"train": ("t.tsv", "id\ta\ty\n" + rows)})
    enc = encode_split(spec, "train", tokenizer, 10, tmp_path / "cache")
    assert len(enc) == 5 and enc.ids == ["0", "1", "2", "3", "4"]
    assert enc.lengths.tolist()[1] == 10 and enc.lengths.tolist()[3] == 10
    assert all(n < 10 for i, n in enumerate(enc.lengths.tolist()) if i not in (1, 3))
    assert enc.meta["n_truncated"] == 2 and enc.meta["n"] == 5
    for i in range(5):
        toks = enc.input_ids[enc.offsets[i] : enc.offsets[i + 1]].tolist()
        assert toks[0] == tokenizer.cls_token_id and toks[-1] == tokenizer.sep_token_id
        assert toks.count(tokenizer.sep_token_id) == (2 if pair else 1)
    assert enc.labels.tolist() == [0, 1, 0, 1, 0] and enc.labels.dtype == np.int64


def test_skipped_rows_are_kept_in_the_cache_meta(tmp_path, tokenizer):
    spec, _ = _task(
        tmp_path,
        files={"train": ("t.tsv", "id\ta\ty\n1\tx\tpos\n2\tbroken\n3\tz\tneg\n")},
        train_extra={"skip_malformed": True},
    )
    enc = encode_split(spec, "train", tokenizer, 16, tmp_path / "cache")
    assert enc.ids == ["1", "3"]
    assert [line for line, _ in enc.meta["skipped_rows"]] == [3]


def test_encode_missing_file_is_a_data_error(tmp_path, tokenizer):
    with pytest.raises(DataError, match=r"RTE[/\\]train\.tsv: file not found"):
        encode_split(GLUE["RTE"], "train", tokenizer, 16, tmp_path / "cache", root=tmp_path)
    with pytest.raises(DataError, match="has no split 'nope'"):
        encode_split(GLUE["RTE"], "nope", tokenizer, 16, tmp_path / "cache", root=tmp_path)


def test_slow_tokenizer_is_refused(tokenizer):
    class SlowTokenizer:  # a Python ("slow") tokenizer has no backend_tokenizer
        pass

    with pytest.raises(DataError, match="SlowTokenizer is not a fast tokenizer"):
        data_mod.tokenizer_fingerprint(SlowTokenizer())
    fp = data_mod.tokenizer_fingerprint(tokenizer)
    assert re.fullmatch(r"[0-9a-f]{16}", fp) and fp == data_mod.tokenizer_fingerprint(tokenizer)


# ============================================================================ batching
def test_collate_pads_dynamically(glue_root, tmp_path, tokenizer):
    enc = encode_split(GLUE["MRPC"], "dev", tokenizer, 64, tmp_path / "c", root=glue_root)
    lengths = enc.lengths
    idx = [5, 0, 11]
    batch = collate(enc, idx, pad_id=tokenizer.pad_token_id)
    width = int(lengths[idx].max())
    assert width < 64  # padded to the batch, not to max_len
    for k in ("input_ids", "attention_mask", "token_type_ids"):
        assert batch[k].shape == (3, width) and batch[k].dtype == torch.int64
    assert batch["attention_mask"].sum(1).tolist() == lengths[idx].tolist()
    assert batch["index"].tolist() == idx and batch["index"].dtype == torch.int64
    assert batch["labels"].dtype == torch.int64 and batch["labels"].tolist() == np.asarray(enc.labels)[idx].tolist()
    for r, i in enumerate(idx):
        n = int(lengths[i])
        assert batch["input_ids"][r, :n].tolist() == enc.input_ids[enc.offsets[i] : enc.offsets[i + 1]].tolist()
        assert (batch["input_ids"][r, n:] == tokenizer.pad_token_id).all()
        assert (batch["token_type_ids"][r, n:] == 0).all()
        assert batch["token_type_ids"][r, :n].max() == 1  # a pair: segment B present
    assert "groups" not in batch
    padded = collate(enc, idx, pad_multiple=8)
    assert padded["input_ids"].shape[1] == -(-width // 8) * 8
    assert padded["attention_mask"].sum(1).tolist() == lengths[idx].tolist()


def test_collate_regression_labels_are_float32(glue_root, tmp_path, tokenizer):
    enc = encode_split(GLUE["STS-B"], "dev", tokenizer, 32, tmp_path / "c", root=glue_root)
    batch = collate(enc, [3, 1])
    assert batch["labels"].dtype == torch.float32
    raw = read_split(GLUE["STS-B"], "dev", glue_root)
    assert batch["labels"].tolist() == [raw.labels[3], raw.labels[1]]


def test_collate_unlabelled_split_has_no_labels(glue_root, tmp_path, tokenizer):
    enc = encode_split(GLUE["SST-2"], "test", tokenizer, 32, tmp_path / "c", root=glue_root)
    batch = collate(enc, [0, 1])
    assert "labels" not in batch and batch["input_ids"].shape[0] == 2


def test_ranking_task_groups_by_query(tmp_path, tokenizer):
    rows = (
        "q\tdoc\trel\nwhat is a cat\ta small animal\t1\nwhat is a cat\ta car\t0\n"
        "who won\tthe team\t1\nwhat is a cat\tpets\t0\n"
    )
    spec, _ = _task(
        tmp_path,
        files={"train": ("r.tsv", rows)},
        head="ranking",
        labels=None,
        fields={"text_a": "q", "text_b": "doc", "label": "rel"},
    )
    assert spec.head == HeadKind.RANKING and spec.labels == ("0", "1") and spec.num_outputs == 1
    enc = encode_split(spec, "train", tokenizer, 16, tmp_path / "cache")
    g = enc.groups.tolist()
    assert g[0] == g[1] == g[3] != g[2]
    assert enc.labels.tolist() == [1, 0, 1, 0]
    batch = collate(enc, [0, 2, 3])
    assert batch["groups"].tolist() == [g[0], g[2], g[3]] and batch["labels"].dtype == torch.int64


def test_subsample():
    a = subsample(100, 10, seed=3)
    assert a.dtype == np.int64 and len(a) == 10 and len(set(a.tolist())) == 10
    assert (np.diff(a) > 0).all() and a.min() >= 0 and a.max() < 100
    np.testing.assert_array_equal(a, subsample(100, 10, seed=3))
    assert not np.array_equal(a, subsample(100, 10, seed=4))
    np.testing.assert_array_equal(subsample(7, None, 0), np.arange(7))
    np.testing.assert_array_equal(subsample(7, 7, 0), np.arange(7))
    np.testing.assert_array_equal(subsample(7, 50, 0), np.arange(7))
    assert len(subsample(5, 0, 0)) == 0


# ============================================================================ inference batches
@pytest.mark.parametrize("batch_size,max_tokens", [(4, None), (128, 40), (3, 25), (128, 5)])
def test_length_batches_sorted_capped_and_complete(batch_size, max_tokens):
    lengths = np.random.default_rng(0).integers(3, 30, size=57)
    batches = length_batches(lengths, batch_size, max_tokens)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(57))  # every example exactly once
    assert np.all(np.diff(lengths[flat]) >= 0)  # shortest first
    for b in batches:
        assert 1 <= len(b) <= batch_size
        if max_tokens is not None and len(b) > 1:
            assert len(b) * lengths[b].max() <= max_tokens
    if max_tokens == 40:  # greedy: each batch as large as the budget allows
        for b, nxt in zip(batches, batches[1:], strict=False):
            assert (len(b) + 1) * lengths[nxt[0]] > 40


def test_length_batches_known_split():
    # sorted lengths 2,2,3,5,10 with a budget of 8 tokens: [2,2,(3? 3*3=9>8)] [3,(5? 2*5=10>8)] [5] [10 alone]
    lengths = np.array([10, 2, 5, 2, 3])
    got = [b.tolist() for b in length_batches(lengths, 128, 8)]
    assert got == [[1, 3], [4], [2], [0]]
    with pytest.raises(ValueError, match="positive"):
        length_batches(lengths, 0, 8)


def test_predict_logits_does_not_depend_on_batching(glue_root, tmp_path, tokenizer, tiny_encoder):
    from mtkd.loop import predict_logits
    from mtkd.model import MTModel

    spec = GLUE["MRPC"]
    data = encode_split(spec, "train", tokenizer, 64, tmp_path / "cache", root=glue_root)
    torch.manual_seed(0)
    model = MTModel.from_encoder(str(tiny_encoder), {"MRPC": spec}, init="pretrained")
    idx = np.array([5, 0, 17, 3, 3, 40, 11])  # any order, repeats allowed: rows come back in this order
    one = predict_logits(model, data, "MRPC", idx, batch_size=1)
    budget = predict_logits(model, data, "MRPC", idx, batch_size=128, max_tokens=3 * int(data.lengths.max()))
    assert one.shape == (7, 2)
    np.testing.assert_allclose(budget, one, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(one[3], one[4])
    alone = predict_logits(model, data, "MRPC", [40], batch_size=1)
    np.testing.assert_allclose(one[5], alone[0], rtol=1e-5, atol=1e-6)


def test_a_line_past_the_limit_is_refused_before_it_is_decoded(tmp_path):
    """A huge line (1 GB in the wild) is refused by its length, naming the line, without decoding it."""
    from mtkd.data import check_line_lengths
    from mtkd.errors import DataError

    data = b"sentence\tlabel\n" + b"a\t1\n" * 5 + b"x" * 100 + b"\t1\n" + b"b\t0\n"
    with pytest.raises(DataError, match=r"f.tsv, line 7: line longer than"):
        check_line_lengths(tmp_path / "f.tsv", data, limit=50, chunk=16)  # chunks cut lines anywhere
    check_line_lengths(tmp_path / "f.tsv", data, limit=110, chunk=16)
    with pytest.raises(DataError, match="line 2: line longer"):  # the last line, with no newline after it
        check_line_lengths(tmp_path / "f.tsv", b"header\n" + b"y" * 60, limit=50, chunk=7)
    spec = task_from_dict(
        "T",
        {
            "head": "classification",
            "labels": ["0", "1"],
            "fields": {"text_a": "sentence", "label": "label"},
            "splits": {"train": "t.tsv"},
        },
    )
    (tmp_path / "t.tsv").write_bytes(b"sentence\tlabel\n" + b"z" * (17 << 20) + b"\t1\n")
    with pytest.raises(DataError, match=r"t.tsv, line 2: line longer than 16 MB"):
        read_split(spec, "train", tmp_path)
