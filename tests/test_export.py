"""`mtkd export`: one ONNX graph for the encoder and every head (classification, regression with a
label range, a pair task, a task on another task's head), checked against PyTorch on varied-length
batches; OnnxModel.predict answers as MTModel.predict; int8 export loads and answers; refusals (not
an export, another format, a changed graph, a damaged model folder, a failed check, a non-empty
folder); serving an export needs no torch; other encoder families."""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from conftest import TRAINED_TASKS, write_glue_fixture  # noqa: E402
from mtkd.cli import main  # noqa: E402
from mtkd.errors import CheckpointError, ConfigError, DataError, ExportError  # noqa: E402
from mtkd.export import export_onnx  # noqa: E402
from mtkd.model import MTModel, weights_sha256  # noqa: E402
from mtkd.onnx_model import EXPORT_FILE, GRAPH_FILE, OnnxModel  # noqa: E402
from mtkd.tasks import glue_tasks  # noqa: E402

ALL = glue_tasks()
# classification; regression with a label range (pair); pair classification; 3 labels (pair); AX on MNLI's head
TASKS = TRAINED_TASKS  # ("SST-2", "STS-B", "MRPC", "MNLI", "AX"): conftest's shared trained model
HEADS = ["SST-2", "STS-B", "MRPC", "MNLI"]
WORDS = "the film movie plot cast story show was good great fine lovely bad awful poor dull".split()


def _texts(n: int, seed: int, longest: int = 90) -> list[str]:
    """Texts of 1 to `longest` words (varied lengths, so batches carry padding)."""
    rng = np.random.default_rng(seed)
    return [
        " ".join(rng.choice(WORDS, size=int(k)))
        for k in np.linspace(1, longest, n).round().astype(int)[rng.permutation(n)]
    ]


TEXTS, PAIRS = _texts(11, 0), _texts(11, 1, longest=20)


def _make_model(encoder: Path, folder: Path, tasks=TASKS) -> Path:
    torch.manual_seed(0)
    MTModel.from_encoder(str(encoder), {t: ALL[t] for t in tasks}).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def model_dir(trained_model_dir) -> Path:
    return trained_model_dir


@pytest.fixture(scope="module")
def model(trained_model) -> MTModel:
    return trained_model


# the tests that export (`export_dir`, `int8`, export_onnx through to a graph) are marked integration
@pytest.fixture(scope="module")
def export_dir(model_dir, tmp_path_factory):
    """fp32 export through the command line, no dev data (the check runs on the built-in sentences)."""
    out = tmp_path_factory.mktemp("onnx") / "fp32"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["export", str(model_dir), "--output-dir", str(out), "--data-root", str(out.parent / "no-data")])
    assert rc == 0
    return out, buf.getvalue()


@pytest.fixture(scope="module")
def onnx_model(export_dir) -> OnnxModel:
    return OnnxModel.from_pretrained(export_dir[0])


@pytest.fixture(scope="module")
def glue(tmp_path_factory) -> Path:
    return write_glue_fixture(tmp_path_factory.mktemp("glue-export") / "glue")


@pytest.fixture(scope="module")
def int8(model_dir, glue, tmp_path_factory):
    out = tmp_path_factory.mktemp("onnx") / "int8"
    lines: list[str] = []
    meta = export_onnx(model_dir, out, quantize="int8", data_root=glue, dev_cap=12, echo=lines.append)
    return out, meta, lines


def _torch_heads(model, ids, mask, types):
    with torch.inference_mode():
        cls = model.encode(torch.from_numpy(ids), torch.from_numpy(mask), torch.from_numpy(types))
        return {h: model.heads[h](cls).numpy() for h in model.heads}


@pytest.mark.integration
def test_export_folder_layout_and_metadata(export_dir, model_dir):
    out, printed = export_dir
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".onnx") == [GRAPH_FILE]  # one graph
    assert (out / "tokenizer.json").is_file() and (out / EXPORT_FILE).is_file()
    assert not list(out.parent.glob(".fp32*"))  # no temp folder left
    meta = json.loads((out / EXPORT_FILE).read_text())
    assert meta["format"] == "mtkd-onnx" and meta["format_version"] == 1 and meta["quantization"] is None
    assert meta["inputs"] == ["input_ids", "attention_mask", "token_type_ids"] and meta["use_token_types"]
    assert meta["outputs"] == {"SST-2": "SST-2", "STS-B": "STS-B", "MRPC": "MRPC", "MNLI": "MNLI", "AX": "MNLI"}
    assert set(meta["tasks"]) == set(TASKS) and meta["tasks"]["STS-B"]["label_range"] == [0.0, 5.0]
    assert meta["source"]["weights_sha256"] == weights_sha256(model_dir)
    assert meta["max_positions"] == 128
    assert meta["check"]["max_abs_diff_fp32"] <= 1e-4 and meta["check"]["source"].startswith("built-in")
    assert "max abs diff" in printed and "built-in sentences" in printed


@pytest.mark.integration
def test_graph_inputs_outputs_named_and_dynamic(export_dir):
    sess = ort.InferenceSession(str(export_dir[0] / GRAPH_FILE), providers=["CPUExecutionProvider"])
    ins = {i.name: i for i in sess.get_inputs()}
    assert list(ins) == ["input_ids", "attention_mask", "token_type_ids"]
    assert all(i.type == "tensor(int64)" and all(isinstance(d, str) for d in i.shape) for i in ins.values())
    outs = {o.name: o.shape for o in sess.get_outputs()}
    assert list(outs) == HEADS  # one output per head, named after its task
    assert outs["SST-2"][1] == 2 and outs["MNLI"][1] == 3 and outs["MRPC"][1] == 2
    assert len(outs["STS-B"]) == 1  # a regression head: the (batch,) score


@pytest.mark.integration
@pytest.mark.parametrize("batch_size", [1, 3, 11])
def test_onnx_matches_pytorch_on_varied_length_batches(export_dir, model, batch_size):
    sess = ort.InferenceSession(str(export_dir[0] / GRAPH_FILE), providers=["CPUExecutionProvider"])
    for lo in range(0, len(TEXTS), batch_size):
        enc = model.tokenizer(
            TEXTS[lo : lo + batch_size], PAIRS[lo : lo + batch_size], padding=True, return_tensors="np"
        )
        feed = {k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
        got = dict(zip(HEADS, sess.run(HEADS, feed), strict=True))
        want = _torch_heads(model, *feed.values())
        for h in HEADS:
            w = want[h] if h != "STS-B" else want[h][:, 0]
            assert got[h].shape == w.shape
            assert np.abs(got[h] - w).max() <= 1e-4, h


@pytest.mark.integration
def test_onnx_model_predict_equals_mtmodel(onnx_model, model):
    assert set(onnx_model.tasks) == set(TASKS) and onnx_model.tokenizer.is_fast
    for kw in ({}, {"batch_size": 2, "max_tokens": 40}, {"max_len": 16}):
        a = onnx_model.predict(list(TASKS), TEXTS, PAIRS, **kw)
        b = model.predict(list(TASKS), TEXTS, PAIRS, **kw)
        for t in ("SST-2", "MRPC", "MNLI", "AX"):
            assert a[t] == b[t], (t, kw)
        np.testing.assert_allclose(a["STS-B"], b["STS-B"], atol=1e-4)
        assert all(0.0 <= s <= 5.0 for s in a["STS-B"])
    assert onnx_model.predict("SST-2", TEXTS) == model.predict("SST-2", TEXTS)  # one task: a list
    np.testing.assert_allclose(
        onnx_model.predict("MNLI", TEXTS, PAIRS, return_probs=True),
        model.predict("MNLI", TEXTS, PAIRS, return_probs=True),
        atol=1e-5,
    )
    assert onnx_model.predict("SST-2", []) == [] and onnx_model.predict("MNLI", [], return_probs=True).shape == (0, 3)
    with pytest.raises(KeyError, match="CoLA"):
        onnx_model.predict("CoLA", TEXTS)
    with pytest.raises(ValueError, match="11 texts but 2 text pairs"):
        onnx_model.predict("MRPC", TEXTS, PAIRS[:2])


@pytest.mark.integration
def test_int8_export_loads_and_answers(int8, model):
    out, meta, lines = int8
    assert sorted(p.name for p in out.iterdir() if p.suffix == ".onnx") == [GRAPH_FILE]  # no fp32 intermediate
    ops = {n.op_type for n in onnx.load(str(out / GRAPH_FILE)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeMatMul", "QAttention"}, ops
    m = OnnxModel.from_pretrained(out)
    assert m.quantization == "int8" and meta["quantization"] == "int8"
    got = m.predict(list(TASKS), TEXTS, PAIRS)
    for t in ("SST-2", "MRPC", "MNLI", "AX"):
        assert len(got[t]) == len(TEXTS) and set(got[t]) <= set(ALL[t].labels)
    assert all(np.isfinite(s) and 0.0 <= s <= 5.0 for s in got["STS-B"])
    # each task's dev metric before (PyTorch fp32) and after (int8), and the speed ratio, printed and recorded
    dev = meta["int8"]["dev"]
    assert {"SST-2", "STS-B", "MRPC"} <= set(dev)
    assert set(dev["STS-B"]["pytorch_fp32"]) == set(dev["STS-B"]["onnx"]) == {"pearson", "spearman"}
    assert dev["SST-2"]["examples"] == 12 and meta["int8"]["speed"]["ratio"] > 0
    assert any(line.startswith("dev SST-2 (12 of 16 examples): accuracy") for line in lines)
    assert any("speed on the dev texts" in line for line in lines)
    assert meta["check"]["max_abs_diff_fp32"] <= 1e-4  # the fp32 graph was checked before quantizing


@pytest.mark.integration
def test_loading_refuses_what_is_not_an_export(model_dir, export_dir, tmp_path):
    with pytest.raises(CheckpointError, match=EXPORT_FILE):
        OnnxModel.from_pretrained(model_dir)
    bad = tmp_path / "other"
    shutil.copytree(export_dir[0], bad)
    meta = json.loads((bad / EXPORT_FILE).read_text())
    (bad / EXPORT_FILE).write_text(json.dumps({**meta, "format": "mtkd"}))
    with pytest.raises(CheckpointError, match=rf"{EXPORT_FILE}: field 'format' is 'mtkd', expected 'mtkd-onnx'"):
        OnnxModel.from_pretrained(bad)
    (bad / EXPORT_FILE).write_text(json.dumps(meta))
    data = (bad / GRAPH_FILE).read_bytes()
    (bad / GRAPH_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=rf"{GRAPH_FILE}: .* bytes, .* were written"):
        OnnxModel.from_pretrained(bad)
    (bad / GRAPH_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"{GRAPH_FILE}: missing"):
        OnnxModel.from_pretrained(bad)


def test_damaged_model_folder_gives_the_loaders_error(model_dir, tmp_path):
    bad = tmp_path / "damaged"
    shutil.copytree(model_dir, bad)
    w = bad / "model.safetensors"
    w.write_bytes(w.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="model.safetensors.*damaged"):
        export_onnx(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert main(["export", str(bad), "--output-dir", str(tmp_path / "out")]) == 2


@pytest.mark.integration
def test_failed_check_writes_nothing(model_dir, tmp_path):
    with pytest.raises(ExportError, match="differ from PyTorch's by"):
        export_onnx(model_dir, tmp_path / "out", data_root=tmp_path / "none", atol=0.0, optimize=False)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor a temp folder


@pytest.mark.integration
def test_output_folder_refusals_and_replacing_an_export(model_dir, export_dir, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    with pytest.raises(ConfigError, match="not empty"):
        export_onnx(model_dir, busy)
    with pytest.raises(ConfigError, match="model folder itself"):
        export_onnx(model_dir, model_dir)
    with pytest.raises(ConfigError, match="--quantize 'int4'"):
        export_onnx(model_dir, tmp_path / "q", quantize="int4")
    again = tmp_path / "again"
    shutil.copytree(export_dir[0], again)
    (again / "stale.txt").write_text("from the earlier export")
    export_onnx(model_dir, again, data_root=tmp_path / "none", optimize=False)  # an earlier export is replaced
    assert not (again / "stale.txt").exists() and OnnxModel.from_pretrained(again).predict("SST-2", ["fine"])


@pytest.mark.integration
def test_serving_an_export_needs_no_torch(export_dir, onnx_model):
    code = (
        "import sys, json\n"
        "for m in ('torch', 'safetensors.torch', 'accelerate'):\n"
        "    sys.modules[m] = None  # as if not installed\n"
        "from mtkd.onnx_model import OnnxModel\n"
        f"m = OnnxModel.from_pretrained({str(export_dir[0])!r})\n"
        f"print(json.dumps(m.predict(['SST-2', 'STS-B'], {TEXTS[:4]!r}, {PAIRS[:4]!r})))\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(proc.stdout.strip().splitlines()[-1])
    want = onnx_model.predict(["SST-2", "STS-B"], TEXTS[:4], PAIRS[:4])
    assert got["SST-2"] == want["SST-2"]
    np.testing.assert_allclose(got["STS-B"], want["STS-B"], atol=1e-6)


@pytest.mark.integration
@pytest.mark.parametrize("family", ["roberta", "distilbert", "electra", "deberta-v2", "modernbert"])
def test_other_encoder_families_export(family, tmp_path):
    from mtkd.testing import save_tiny_family_encoder

    folder = _make_model(save_tiny_family_encoder(tmp_path / "enc", family), tmp_path / "model", ("SST-2", "STS-B"))
    meta = export_onnx(folder, tmp_path / "onnx", data_root=tmp_path / "none")
    assert meta["check"]["max_abs_diff_fp32"] <= 1e-4
    assert meta["use_token_types"] == (family == "electra")
    a = OnnxModel.from_pretrained(tmp_path / "onnx").predict(["SST-2", "STS-B"], TEXTS, PAIRS)
    b = MTModel.from_pretrained(folder).eval().predict(["SST-2", "STS-B"], TEXTS, PAIRS)
    assert a["SST-2"] == b["SST-2"]
    np.testing.assert_allclose(a["STS-B"], b["STS-B"], atol=1e-4)


@pytest.mark.integration
def test_dynamo_exporter(model_dir, model, tmp_path):
    pytest.importorskip("onnxscript")
    meta = export_onnx(model_dir, tmp_path / "onnx", data_root=tmp_path / "none", exporter="dynamo")
    assert meta["exporter"] == "dynamo" and meta["check"]["max_abs_diff_fp32"] <= 1e-4
    m = OnnxModel.from_pretrained(tmp_path / "onnx")
    assert m.predict(["SST-2", "MNLI"], TEXTS, PAIRS) == model.predict(["SST-2", "MNLI"], TEXTS, PAIRS)


@pytest.mark.integration
def test_without_onnxruntime_the_error_names_the_extra(model_dir, export_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'mtkd\[onnx\]'"):
        export_onnx(model_dir, tmp_path / "out")
    with pytest.raises(ConfigError, match=r"pip install 'mtkd\[onnx\]'"):
        OnnxModel.from_pretrained(export_dir[0])
    assert not (tmp_path / "out").exists()


def test_a_malformed_dev_file_is_an_error_naming_it(model_dir, tmp_path):
    """An absent dev file falls back to built-in sentences; a malformed one is not silently skipped."""
    root = tmp_path / "glue"
    (root / "SST-2").mkdir(parents=True)
    (root / "SST-2" / "dev.tsv").write_text("sentence\tlabel\nfine\t1\nno label column here\n")
    with pytest.raises(DataError, match=r"SST-2/dev\.tsv, line 3"):
        export_onnx(model_dir, tmp_path / "out", data_root=root, optimize=False)
    assert not (tmp_path / "out").exists()


@pytest.mark.integration
def test_a_fused_graph_that_does_not_run_falls_back_to_the_plain_graph(model_dir, tmp_path, monkeypatch):
    import mtkd.export as export

    def broken_fuse(src, dst, config):
        dst.write_bytes(b"not an onnx graph")
        return {"Attention": 2}

    monkeypatch.setattr(export, "_fuse", broken_fuse)
    export_onnx(model_dir, tmp_path / "out", data_root=tmp_path / "none")
    meta = json.loads((tmp_path / "out" / "mtkd_export.json").read_text())
    assert meta["check"]["max_abs_diff_fp32"] <= 1e-4 and meta["fused"] == {}
    assert OnnxModel.from_pretrained(tmp_path / "out").predict("SST-2", ["a film"])
