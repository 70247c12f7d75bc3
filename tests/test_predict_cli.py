"""`mtkd predict` on new text: --text refusals (empty text, pair task without --pair), and
--input FILE --output FILE (TSV/JSONL in, JSONL/TSV out, input order, same predictions as --text,
bad rows named by file and line), plus MTModel.predict's length-sorted token-budget batches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from mtkd.cli import main
from mtkd.inference import length_batches
from mtkd.model import MTModel
from mtkd.tasks import glue_tasks

ALL = glue_tasks()
# lengths differ a lot, so length sorting reorders them
TEXTS = [
    "the film was good and the cast was lovely and the plot was fine .",
    "awful",
    "a lovely cast",
    "the show was dull , the story poor and the plot terrible from start to end .",
    "great",
]
PAIRS = ["the movie is fine", "it was bad", "the cast is great", "nothing happened", "fine"]


@pytest.fixture(scope="module")
def model_dir(trained_model_dir):
    return trained_model_dir  # conftest's shared model: SST-2, STS-B, MRPC, MNLI, AX


@pytest.fixture(scope="module")
def model(trained_model):
    return trained_model


def _predict(model_dir, *args) -> int:
    return main(["predict", "--model", str(model_dir), *map(str, args)])


def _text_json(model_dir, capsys, tasks, texts, pairs=None):
    args = [a for t in tasks for a in ("--task", t)] + [a for t in texts for a in ("--text", t)]
    args += [a for p in pairs or () for a in ("--pair", p)]
    assert _predict(model_dir, *args) == 0
    out = json.loads(capsys.readouterr().out)
    return out if len(tasks) > 1 else {tasks[0]: out}


# ------------------------------------------------------------------------------ --text
def test_empty_text_refused(model_dir, capsys):
    assert _predict(model_dir, "--task", "SST-2", "--text", "good", "--text", " ") == 2
    assert "mtkd: error: predict: --text number 2 is empty" in capsys.readouterr().err


def test_pair_task_without_pair_refused(model_dir, capsys):
    assert _predict(model_dir, "--task", "SST-2", "--task", "MNLI", "--text", "a cat") == 2
    assert "task MNLI is a pair task: give one --pair" in capsys.readouterr().err


def test_unknown_task_suggests_the_closest(model_dir, capsys):
    assert _predict(model_dir, "--task", "SST2", "--text", "good") == 2
    err = capsys.readouterr().err
    assert (
        f"--task SST2: not a task of {model_dir} (did you mean 'SST-2'?) (it has SST-2, STS-B, MRPC, MNLI, AX)" in err
    )


def test_file_options_need_input(model_dir, capsys):
    assert _predict(model_dir, "--task", "SST-2", "--text", "x", "--output", "o.jsonl") == 2
    assert "--output go with --input" in capsys.readouterr().err


# ------------------------------------------------------------------------------ --input
def test_tsv_input_matches_text_and_keeps_order(model_dir, tmp_path, capsys):
    ids = [f"r{i}" for i in (5, 3, 9, 1, 7)]
    inp = tmp_path / "in.tsv"
    inp.write_text("id\ttext\tpair\n" + "".join(f"{i}\t{t}\t{p}\n" for i, t, p in zip(ids, TEXTS, PAIRS, strict=True)))
    out = tmp_path / "pred.jsonl"
    assert _predict(model_dir, "--task", "SST-2", "--task", "STS-B", "--input", inp, "--output", out) == 0
    assert f"wrote 5 predictions (SST-2, STS-B) to {out}" in capsys.readouterr().out
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ids  # input order
    ref = _text_json(model_dir, capsys, ["SST-2", "STS-B"], TEXTS, PAIRS)
    assert [r["predictions"]["SST-2"] for r in rows] == ref["SST-2"]
    np.testing.assert_allclose([r["predictions"]["STS-B"] for r in rows], ref["STS-B"], atol=1e-5)


def test_jsonl_input_tsv_output_with_probs(model_dir, model, tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text(
        "".join(json.dumps({"id": i, "t": t, "h": p}) + "\n" for i, (t, p) in enumerate(zip(TEXTS, PAIRS, strict=True)))
    )
    out = tmp_path / "sub" / "pred.tsv"
    assert (
        _predict(
            model_dir,
            "--task",
            "MNLI",
            "--input",
            inp,
            "--text-column",
            "t",
            "--pair-column",
            "h",
            "--output",
            out,
            "--probs",
        )
        == 0
    )
    lines = out.read_text().splitlines()
    labels = ALL["MNLI"].labels
    assert lines[0].split("\t") == ["id", "MNLI"] + [f"MNLI:{lab}" for lab in labels]
    cells = [ln.split("\t") for ln in lines[1:]]
    assert [c[0] for c in cells] == ["0", "1", "2", "3", "4"]
    assert [c[1] for c in cells] == model.predict("MNLI", TEXTS, PAIRS)
    probs = np.array([[float(x) for x in c[2:]] for c in cells])
    np.testing.assert_allclose(probs, model.predict("MNLI", TEXTS, PAIRS, return_probs=True), atol=1e-5)


def test_pair_task_input_needs_pair_column(model_dir, tmp_path, capsys):
    inp = tmp_path / "in.tsv"
    inp.write_text("id\ttext\n1\ta cat\n")
    assert _predict(model_dir, "--task", "MNLI", "--input", inp, "--output", tmp_path / "o.jsonl") == 2
    assert f"{inp.resolve()}, line 1, field 'pair': header has no column 'pair'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "name, content, where",
    [
        ("missing.tsv", "id\tsentence\n1\tgood\n", "line 1, field 'text': header has no column 'text'"),
        ("empty.tsv", "id\ttext\n1\tgood\n2\t  \n", "line 3, field 'text': empty text"),
        ("short.tsv", "id\ttext\n1\tgood\n2\n", "line 3: expected 2 fields"),
        ("dup.tsv", "id\ttext\n1\tgood\n1\tbad\n", "line 3, field 'id': duplicate example id '1'"),
        ("nokey.jsonl", '{"id": 1, "text": "good"}\n{"id": 2}\n', "line 2, field 'text': missing field"),
    ],
)
def test_bad_input_rows_name_file_and_line(model_dir, tmp_path, capsys, name, content, where):
    inp = tmp_path / name
    inp.write_text(content)
    out = tmp_path / "o.jsonl"
    assert _predict(model_dir, "--task", "SST-2", "--input", inp, "--output", out) == 2
    assert f"mtkd: error: {inp.resolve()}, {where}" in capsys.readouterr().err
    assert not out.exists()


def test_input_output_refusals(model_dir, tmp_path, capsys):
    inp = tmp_path / "in.tsv"
    inp.write_text("id\ttext\n1\tgood\n")
    assert _predict(model_dir, "--task", "SST-2", "--input", inp) == 2
    assert "--input needs --output FILE" in capsys.readouterr().err
    assert _predict(model_dir, "--task", "SST-2", "--input", tmp_path / "nope.tsv", "--output", tmp_path / "o.tsv") == 2
    assert "nope.tsv: file not found" in capsys.readouterr().err
    assert _predict(model_dir, "--task", "SST-2", "--input", inp, "--output", tmp_path) == 2
    assert "is a folder, not a file" in capsys.readouterr().err
    jl = tmp_path / "tab.jsonl"
    jl.write_text(json.dumps({"id": "a\tb", "text": "good"}) + "\n")
    assert _predict(model_dir, "--task", "SST-2", "--input", jl, "--output", tmp_path / "o.tsv") == 2
    assert "example id 'a\\tb' holds a tab or line break" in capsys.readouterr().err
    assert (
        _predict(model_dir, "--task", "SST-2", "--input", jl, "--output", tmp_path / "o.jsonl") == 0
    )  # JSON escapes it
    assert json.loads((tmp_path / "o.jsonl").read_text())["id"] == "a\tb"


def _spy_on_predict(monkeypatch) -> dict:
    """The keyword arguments MTModel.predict is called with (filled in when it runs)."""
    seen = {}
    real = MTModel.predict

    def spy(self, *a, **kw):
        seen.update(kw)
        return real(self, *a, **kw)

    monkeypatch.setattr(MTModel, "predict", spy)
    return seen


def test_input_uses_predict_config_batches(model_dir, tmp_path, capsys, monkeypatch):
    seen = _spy_on_predict(monkeypatch)
    inp = tmp_path / "in.tsv"
    inp.write_text("id\ttext\n" + "".join(f"{i}\t{t}\n" for i, t in enumerate(TEXTS)))
    assert (
        _predict(
            model_dir,
            "--task",
            "SST-2",
            "--input",
            inp,
            "--output",
            tmp_path / "o.jsonl",
            "--set",
            "predict.batch_size=2",
            "--set",
            "predict.max_tokens=40",
            "--set",
            "data.max_seq_len=16",
        )
        == 0
    )
    assert (seen["batch_size"], seen["max_tokens"], seen["max_len"]) == (2, 40, 16)


@pytest.mark.parametrize("how", ["dotted", "mapping", "file", "unset", "removed"])
def test_data_max_seq_len_cuts_every_task_however_it_is_given(model_dir, tmp_path, capsys, monkeypatch, how):
    """One parser: load_config records the keys given, so every way of setting data.max_seq_len counts."""
    seen = _spy_on_predict(monkeypatch)
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data: {max_seq_len: 8}\n" if how in ("file", "removed") else "predict: {batch_size: 4}\n")
    extra = {
        "dotted": ["--set", "data.max_seq_len=8"],
        "mapping": ["--set", "data={max_seq_len: 8}"],
        "removed": ["--set", "~data.max_seq_len"],
    }.get(how, [])
    assert _predict(model_dir, cfg, "--task", "SST-2", "--text", "good", *extra) == 0
    assert seen["max_len"] == (None if how in ("unset", "removed") else 8)  # None: each task's trained length


# ------------------------------------------------------------------------------ MTModel.predict batching
def test_predict_sorts_by_length_in_token_budget_batches_and_keeps_order(model):
    calls = []
    h = model.encoder.register_forward_hook(
        lambda mod, args, kw, out: calls.append(kw["input_ids"].shape), with_kwargs=True
    )
    try:
        out = model.predict(["SST-2", "STS-B"], TEXTS, PAIRS, batch_size=4, max_tokens=40)
    finally:
        h.remove()
    lengths = [len(x) for x in model.tokenizer(TEXTS, PAIRS)["input_ids"]]
    expected = length_batches(lengths, 4, 40)
    assert [s[0] for s in calls] == [len(b) for b in expected]
    assert [s[1] for s in calls] == [max(lengths[i] for i in b) for b in expected]  # padded to the batch's longest
    one_by_one = [model.predict(["SST-2", "STS-B"], [t], [p]) for t, p in zip(TEXTS, PAIRS, strict=True)]
    assert out["SST-2"] == [o["SST-2"][0] for o in one_by_one]
    np.testing.assert_allclose(out["STS-B"], [o["STS-B"][0] for o in one_by_one], atol=1e-5)
    assert model.predict("SST-2", []) == []
    with pytest.raises(ValueError, match="5 texts but 2 text pairs"):
        model.predict("SST-2", TEXTS, PAIRS[:2])
