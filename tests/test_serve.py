"""`mtkd serve`: the HTTP API started on a free loopback port answers /predict, /tasks and /health
as MTModel.predict does; every bad input gets its 4xx status and a message naming the field, and
the server keeps serving; concurrent requests are batched together and get the same answers as
one-by-one requests; long texts are truncated and reported; a failing batch answers 500 and the
server keeps serving; the `mtkd serve` command serves a model folder."""

from __future__ import annotations

import concurrent.futures
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from conftest import TRAINED_TASKS  # noqa: E402
from mtkd.errors import CheckpointError  # noqa: E402
from mtkd.model import MTModel  # noqa: E402
from mtkd.serve import BackgroundServer, BatchRunner, Job, create_app, load_for_serving  # noqa: E402
from mtkd.tasks import glue_tasks  # noqa: E402

TASKS = TRAINED_TASKS  # conftest's shared model: SST-2, STS-B (regression, a label range), MRPC, MNLI, AX (pairs)
TEXTS = ["the film was good .", "the plot was awful .", "a lovely cast", "the show was dull and the story poor ."]
PAIRS = ["the movie is fine", "it was bad", "the cast is great", "nothing happened"]
MAX_TEXTS, MAX_CHARS = 8, 2000


@pytest.fixture(scope="module")
def folder(trained_model_dir) -> Path:
    return trained_model_dir


@pytest.fixture(scope="module")
def model(trained_model) -> MTModel:
    return trained_model


# the tests that talk to a server (`url`, `client`, BackgroundServer, `mtkd serve`) are marked integration
@pytest.fixture(scope="module")
def url(model, folder):
    app = create_app(
        model,
        name="tiny",
        max_texts=MAX_TEXTS,
        max_chars=MAX_CHARS,
        max_body_bytes=64 * 1024,
        max_batch=32,
        max_wait_ms=20,
    )
    with BackgroundServer(app) as u:
        yield u


@pytest.fixture(scope="module")
def client(url):
    with httpx.Client(base_url=url, timeout=60) as c:
        yield c


def _health(client) -> dict:
    r = client.get("/health")
    assert r.status_code == 200
    return r.json()


@pytest.mark.integration
def test_health_and_tasks(client, model):
    h = _health(client)
    assert h["status"] == "ok" and h["model"] == "tiny" and h["backend"] == "pytorch"
    assert h["limits"]["max_texts"] == MAX_TEXTS and h["limits"]["max_chars"] == MAX_CHARS
    r = client.get("/tasks")
    assert r.status_code == 200
    tasks = {t["name"]: t for t in r.json()["tasks"]}
    assert list(tasks) == list(TASKS)
    assert tasks["SST-2"] == {
        "name": "SST-2",
        "kind": "classification",
        "labels": ["0", "1"],
        "inputs": ["text"],
        "max_len": 128,
        "output": "label",
    }  # the tiny encoder has 128 positions
    assert tasks["STS-B"]["kind"] == "regression" and tasks["STS-B"]["range"] == [0.0, 5.0]
    assert tasks["STS-B"]["inputs"] == tasks["MRPC"]["inputs"] == ["text", "pair"]
    assert tasks["MRPC"]["labels"] == ["0", "1"] and tasks["STS-B"]["output"] == "score"


@pytest.mark.integration
def test_predict_answers_as_mtmodel_predict(client, model):
    r = client.post("/predict", json={"texts": TEXTS, "tasks": ["SST-2"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == "tiny" and body["tasks"] == ["SST-2"] and body["truncated"] == {}
    assert [res["SST-2"]["label"] for res in body["results"]] == model.predict("SST-2", TEXTS)
    assert all(set(res["SST-2"]) == {"label"} for res in body["results"])

    r = client.post("/predict", json={"texts": TEXTS, "tasks": ["SST-2"], "probabilities": True})
    probs = np.array([[res["SST-2"]["probabilities"][lab] for lab in ("0", "1")] for res in r.json()["results"]])
    np.testing.assert_allclose(probs, model.predict("SST-2", TEXTS, return_probs=True), atol=1e-5)

    r = client.post(
        "/predict", json={"texts": TEXTS, "pairs": PAIRS, "tasks": ["STS-B", "MRPC"], "probabilities": True}
    )
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    want = model.predict(["STS-B", "MRPC"], TEXTS, PAIRS, return_probs=True)
    np.testing.assert_allclose([res["STS-B"]["score"] for res in results], want["STS-B"], atol=1e-5)
    assert all(0.0 <= res["STS-B"]["score"] <= 5.0 for res in results)
    assert [res["MRPC"]["label"] for res in results] == model.predict("MRPC", TEXTS, PAIRS)
    np.testing.assert_allclose(
        [[res["MRPC"]["probabilities"][lab] for lab in ("0", "1")] for res in results], want["MRPC"], atol=1e-5
    )


@pytest.mark.integration
def test_mixed_tasks_and_default_tasks(client, model):
    # a single-text task reads the texts only, a pair task the (text, pair) pairs
    r = client.post("/predict", json={"texts": TEXTS, "pairs": PAIRS, "tasks": ["MRPC", "SST-2"]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["tasks"] == ["MRPC", "SST-2"] and list(body["results"][0]) == ["MRPC", "SST-2"]
    assert [res["SST-2"]["label"] for res in body["results"]] == model.predict("SST-2", TEXTS)
    assert [res["MRPC"]["label"] for res in body["results"]] == model.predict("MRPC", TEXTS, PAIRS)
    # no tasks: every task that reads what was sent
    assert client.post("/predict", json={"texts": TEXTS}).json()["tasks"] == ["SST-2"]
    assert client.post("/predict", json={"texts": TEXTS, "pairs": PAIRS}).json()["tasks"] == [
        "STS-B",
        "MRPC",
        "MNLI",
        "AX",
    ]


LONG = "the film was good . " * 40  # 200 words: over the tiny encoder's 128 positions


@pytest.mark.integration
def test_long_text_is_truncated_and_reported(client, model):
    r = client.post("/predict", json={"texts": ["a fine film", LONG], "tasks": ["SST-2"], "probabilities": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["truncated"] == {"SST-2": [1]}  # per task: the tasks that cut something
    probs = [[res["SST-2"]["probabilities"][lab] for lab in ("0", "1")] for res in body["results"]]
    np.testing.assert_allclose(
        probs, model.predict("SST-2", ["a fine film", LONG], max_len=128, return_probs=True), atol=1e-5
    )
    # a pair longer than the limit together
    r = client.post(
        "/predict", json={"texts": ["a cat", LONG[:300]], "pairs": ["a dog", LONG[:300]], "tasks": ["STS-B"]}
    )
    assert r.json()["truncated"] == {"STS-B": [1]}


# ------------------------------------------------------------------------ trained lengths saved
@pytest.fixture(scope="module")
def short_folder(tiny_encoder, tmp_path_factory) -> Path:
    """A model saved with its tasks' trained lengths: SST-2 at 16 tokens, CoLA at 24 (as an mtkd run
    saves them), and MRPC without one (512, capped at the encoder's 128 positions)."""
    from dataclasses import replace

    torch.manual_seed(0)
    g = glue_tasks()
    tasks = {
        "SST-2": replace(g["SST-2"], max_seq_len=16),
        "CoLA": replace(g["CoLA"], max_seq_len=24),
        "MRPC": g["MRPC"],
    }
    out = tmp_path_factory.mktemp("serve-short") / "model"
    MTModel.from_encoder(str(tiny_encoder), tasks).save_pretrained(out)
    return out


def _text_of(tokenizer, n: int) -> str:
    """A text of exactly n tokens, [CLS] and [SEP] included."""
    text = " ".join(["film"] * (n - 2))
    assert len(tokenizer(text)["input_ids"]) == n
    return text


@pytest.mark.integration
def test_trained_lengths_are_served_and_truncation_is_reported_per_task(short_folder):
    model = MTModel.from_pretrained(short_folder).eval()
    t10, t20, t30 = (_text_of(model.tokenizer, n) for n in (10, 20, 30))
    with BackgroundServer(create_app(model, name="short")) as u, httpx.Client(base_url=u, timeout=60) as c:
        lengths = {t["name"]: t["max_len"] for t in c.get("/tasks").json()["tasks"]}
        assert lengths == {"SST-2": 16, "CoLA": 24, "MRPC": 128}
        r = c.post("/predict", json={"texts": [t10, t30, t20], "tasks": ["SST-2", "CoLA"], "probabilities": True})
        assert r.status_code == 200, r.text
        body = r.json()
        # the 30-token text is cut by both, the 20-token one only at 16, the 10-token one by neither
        assert body["truncated"] == {"SST-2": [1, 2], "CoLA": [1]}
        for task, n in (("SST-2", 16), ("CoLA", 24)):  # the answers are those at the trained length
            got = [[res[task]["probabilities"][lab] for lab in ("0", "1")] for res in body["results"]]
            np.testing.assert_allclose(
                got, model.predict(task, [t10, t30, t20], max_len=n, return_probs=True), atol=1e-5
            )
        assert c.post("/predict", json={"texts": [t10], "tasks": ["SST-2"]}).json()["truncated"] == {}
        r = c.post("/predict", json={"texts": [t10, t30], "pairs": [t10, t10], "tasks": ["MRPC", "SST-2"]})
        assert r.json()["truncated"] == {"SST-2": [1]}  # MRPC's pairs (40 tokens) fit its 128


def test_one_tokenisation_per_input_kind_and_length_per_batch(short_folder, monkeypatch):
    """A batch costs one tokenisation per (input kind, task length) group, however many requests it
    holds: each text is cut and its truncation read in the same pass."""
    from mtkd import inference

    model = MTModel.from_pretrained(short_folder).eval()
    runner = BatchRunner(model, max_batch=64)
    calls = []
    real = inference.tokenize
    monkeypatch.setattr(
        inference,
        "tokenize",
        lambda tok, texts, pairs, n: calls.append((len(texts), pairs is not None, n)) or real(tok, texts, pairs, n),
    )
    jobs = [
        Job(["a film", "a dull film"], None, ["SST-2", "CoLA"], False),
        Job(["good"], ["fine"], ["MRPC", "SST-2"], False),
        Job(["bad"], None, ["CoLA"], False),
    ]
    out = runner(jobs)
    assert sorted(calls) == [(1, True, 128), (3, False, 16), (3, False, 24)]
    assert [o["truncated"] for o in out] == [{}, {}, {}] and out[1]["tasks"] == ["MRPC", "SST-2"]


TOO_BIG = json.dumps({"texts": ["x" * 1000] * 70}).encode()  # > 64 KiB
BAD = {
    # name: (body, status, field, message part)
    "malformed JSON": (b'{"texts": ["a", ', 400, "(request body)", "malformed JSON"),
    "not JSON at all": (b"texts=a", 400, "(request body)", "malformed JSON"),
    "an empty body": (b"", 400, "(request body)", "the request body is empty"),
    "not an object": (b'["a", "b"]', 422, "(request body)", "expected a JSON object, got a list"),
    "texts missing": ({"tasks": ["SST-2"]}, 422, "texts", "texts: missing"),
    "unknown field": ({"texts": ["a"], "txt": ["b"]}, 422, "txt", "txt: unknown field"),
    "texts a string": ({"texts": "a gripping film"}, 422, "texts", "texts: expected a list of strings, got a string"),
    "a text a number": ({"texts": ["a", 1]}, 422, "texts[1]", "texts[1]: expected a string, got a number"),
    "a text null": ({"texts": [None]}, 422, "texts[0]", "texts[0]: expected a string, got null"),
    "tasks a string": ({"texts": ["a"], "tasks": "SST-2"}, 422, "tasks", "tasks: expected a list of strings"),
    "probabilities a string": (
        {"texts": ["a"], "probabilities": "yes"},
        422,
        "probabilities",
        "probabilities: expected true or false, got a string",
    ),
    "unknown task": (
        {"texts": ["a"], "tasks": ["SST-2", "SST2"]},
        422,
        "tasks[1]",
        "tasks[1]: unknown task 'SST2' (did you mean 'SST-2'?); this model has SST-2, STS-B, MRPC, MNLI, AX",
    ),
    "empty task list": ({"texts": ["a"], "tasks": []}, 422, "tasks", "tasks: empty list"),
    "empty text list": ({"texts": [], "tasks": ["SST-2"]}, 422, "texts", "texts: empty list"),
    "empty string": ({"texts": ["a", ""], "tasks": ["SST-2"]}, 422, "texts[1]", "texts[1]: empty text"),
    "blank string": ({"texts": ["  \t"]}, 422, "texts[0]", "texts[0]: empty text"),
    "pair task without pairs": (
        {"texts": ["a"], "tasks": ["STS-B"]},
        422,
        "pairs",
        "pairs: missing; STS-B is a pair task",
    ),
    "a pair missing its second text": (
        {"texts": ["a", "b"], "pairs": ["c"], "tasks": ["MRPC"]},
        422,
        "pairs",
        "pairs: 2 texts but 1 pairs",
    ),
    "an empty second text": (
        {"texts": ["a", "b"], "pairs": ["c", ""], "tasks": ["MRPC"]},
        422,
        "pairs[1]",
        "pairs[1]: empty text",
    ),
    "pairs for single-text tasks": (
        {"texts": ["a"], "pairs": ["b"], "tasks": ["SST-2"]},
        422,
        "pairs",
        "no requested task reads a second text",
    ),
    "too many texts": (
        {"texts": ["a"] * (MAX_TEXTS + 1)},
        413,
        "texts",
        f"texts: {MAX_TEXTS + 1} texts, over this server's limit of {MAX_TEXTS} per request",
    ),
    "too many characters": (
        {"texts": ["a", "b" * (MAX_CHARS + 1)]},
        413,
        "texts[1]",
        f"texts[1]: {MAX_CHARS + 1} characters, over this server's limit of {MAX_CHARS} per text",
    ),
    "a pair too long": (
        {"texts": ["a"], "pairs": ["b" * (MAX_CHARS + 1)], "tasks": ["MRPC"]},
        413,
        "pairs[0]",
        "pairs[0]: 2001 characters",
    ),
    "body too large": (TOO_BIG, 413, "(request body)", "request body: 70"),
    "a lone surrogate": (b'{"texts": ["a \\ud800 b"]}', None, None, None),  # 400 or 422, naming the place
}


@pytest.mark.integration
@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_4xx_naming_the_field(client, model, case):
    body, status, where, part = BAD[case]
    before = _health(client)["rejected"]
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    r = client.post("/predict", content=content, headers={"content-type": "application/json"})
    doc = r.json()
    if case == "a lone surrogate":
        assert r.status_code in (400, 422), r.text
        assert "texts[0]" in doc["error"] or "malformed JSON" in doc["error"]
    else:
        assert r.status_code == status, r.text
        assert doc["field"] == where and part in doc["error"], doc
        if where != "(request body)":
            assert doc["error"].startswith(f"{where}: ")
    assert _health(client)["rejected"] == before + 1
    # ...and the server keeps serving
    r = client.post("/predict", json={"texts": TEXTS[:2], "tasks": ["SST-2"]})
    assert r.status_code == 200 and [x["SST-2"]["label"] for x in r.json()["results"]] == model.predict(
        "SST-2", TEXTS[:2]
    )


@pytest.mark.integration
def test_unknown_routes_and_methods_answer_json(client):
    r = client.get("/predict")
    assert r.status_code == 405 and "GET /predict" in r.json()["error"]
    r = client.get("/nothing")
    assert r.status_code == 404 and "/nothing" in r.json()["error"]


def _requests() -> list[dict]:
    """A mix of single texts and batches, single-text and pair tasks, with and without probabilities."""
    out = []
    for i in range(24):
        k = 1 + i % 4
        texts = [TEXTS[(i + j) % 4] + f" {i}" for j in range(k)]
        if i % 3 == 0:
            out.append(
                {
                    "texts": texts,
                    "pairs": [PAIRS[(i + j) % 4] for j in range(k)],
                    "tasks": ["STS-B", "MRPC"],
                    "probabilities": True,
                }
            )
        elif i % 3 == 1:
            out.append({"texts": texts, "tasks": ["SST-2"], "probabilities": bool(i % 2)})
        else:
            out.append({"texts": texts, "pairs": [PAIRS[j % 4] for j in range(k)], "tasks": ["SST-2", "MRPC"]})
    return out


def _same(a: dict, b: dict) -> None:
    assert a["tasks"] == b["tasks"] and a["truncated"] == b["truncated"]
    assert len(a["results"]) == len(b["results"])
    for x, y in zip(a["results"], b["results"], strict=True):
        assert list(x) == list(y)
        for t in x:
            assert set(x[t]) == set(y[t])
            if "label" in x[t]:
                assert x[t]["label"] == y[t]["label"]
            if "score" in x[t]:
                assert x[t]["score"] == pytest.approx(y[t]["score"], abs=1e-5)
            for lab, p in x[t].get("probabilities", {}).items():
                assert p == pytest.approx(y[t]["probabilities"][lab], abs=1e-5)


@pytest.mark.integration
def test_concurrent_requests_are_batched_and_answered_as_one_by_one(client, url):
    reqs = _requests()
    one_by_one = []
    for req in reqs:
        r = client.post("/predict", json=req)
        assert r.status_code == 200, r.text
        one_by_one.append(r.json())
    before = _health(client)

    def post(req):
        with httpx.Client(base_url=url, timeout=60) as c:
            return c.post("/predict", json=req)

    with concurrent.futures.ThreadPoolExecutor(len(reqs)) as pool:
        answers = list(pool.map(post, reqs))
    assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200]
    for got, want in zip(answers, one_by_one, strict=True):
        _same(got.json(), want)
    after = _health(client)
    assert after["requests"] - before["requests"] == len(reqs)
    batches = after["batches"] - before["batches"]
    assert 1 <= batches < len(reqs)  # requests shared encoder passes
    assert after["largest_batch_texts"] > 4


class Flaky:
    """A model that fails on the text 'boom' (the interface create_app serves: tasks, tokenizer, run_batch)."""

    def __init__(self, model):
        self.model, self.tasks, self.tokenizer, self.encoder = model, model.tasks, model.tokenizer, model.encoder
        self.boom = model.tokenizer("boom", add_special_tokens=False)["input_ids"]

    def run_batch(self, names, ids, mask, types):
        if all(t in ids for t in self.boom):
            raise RuntimeError("boom")
        return self.model.run_batch(names, ids, mask, types)


@pytest.mark.integration
def test_a_failing_batch_answers_500_and_the_server_keeps_serving(model):
    with BackgroundServer(create_app(Flaky(model), max_wait_ms=0)) as u, httpx.Client(base_url=u, timeout=60) as c:
        r = c.post("/predict", json={"texts": ["boom"], "tasks": ["SST-2"]})
        assert r.status_code == 500 and "RuntimeError: boom" in r.json()["error"]
        r = c.post("/predict", json={"texts": ["fine"], "tasks": ["SST-2"]})
        assert r.status_code == 200 and r.json()["results"][0]["SST-2"]["label"] == model.predict("SST-2", ["fine"])[0]
        h = c.get("/health").json()
        assert h["failed"] == 1 and h["requests"] == 1


def test_load_for_serving(folder, tmp_path):
    m, backend = load_for_serving(folder)
    assert isinstance(m, MTModel) and backend == "pytorch" and list(m.tasks) == list(TASKS) and not m.training
    with pytest.raises(CheckpointError, match="no such folder"):
        load_for_serving(tmp_path / "nothing")
    with pytest.raises(CheckpointError, match="neither an mtkd model folder"):
        load_for_serving(tmp_path)


@pytest.mark.integration
def test_serves_the_onnx_export(folder, model, tmp_path):
    """The ONNX export folder is served through mtkd.export's OnnxModel with the same answers."""
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from mtkd.export import export_onnx

    out = tmp_path / "onnx"
    export_onnx(folder, out, data_root=tmp_path / "no-data")  # built-in sentences for the export's check
    m, backend = load_for_serving(out)
    assert backend == "onnx" and list(m.tasks) == list(TASKS)
    with BackgroundServer(create_app(m, backend=backend)) as u, httpx.Client(base_url=u, timeout=60) as c:
        assert c.get("/tasks").json()["backend"] == "onnx"
        r = c.post("/predict", json={"texts": TEXTS, "pairs": PAIRS, "tasks": ["STS-B", "MRPC"], "probabilities": True})
        assert r.status_code == 200, r.text
        want = model.predict(["STS-B", "MRPC"], TEXTS, PAIRS, return_probs=True)
        np.testing.assert_allclose([x["STS-B"]["score"] for x in r.json()["results"]], want["STS-B"], atol=1e-4)
        assert [x["MRPC"]["label"] for x in r.json()["results"]] == model.predict("MRPC", TEXTS, PAIRS)


@pytest.mark.integration
def test_mtkd_serve_command(folder):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "mtkd.cli", "serve", str(folder), "--port", "0", "--max-texts", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        line = proc.stdout.readline()
        m = re.search(r"on (http://127\.0\.0\.1:\d+)", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        with httpx.Client(base_url=m.group(1), timeout=60) as c:
            assert c.get("/health").json()["limits"]["max_texts"] == 3
            r = c.post("/predict", json={"texts": ["a fine film"]})
            assert r.status_code == 200 and r.json()["tasks"] == ["SST-2"]
            assert c.post("/predict", json={"texts": ["a"] * 4}).status_code == 413
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode in (0, -15), proc.stderr.read()[-2000:]


def test_serve_refuses_a_missing_model(tmp_path, capsys):
    from mtkd.cli import main

    assert main(["serve", str(tmp_path / "none"), "--port", "0"]) == 2
    assert "no such folder" in capsys.readouterr().err


def test_serve_binds_the_port_before_loading_the_model(tmp_path, capsys, monkeypatch):
    """An address in use is refused before the (possibly long) model load."""
    import socket

    import mtkd.serve
    from mtkd.cli import main

    loaded = []
    monkeypatch.setattr(mtkd.serve, "load_for_serving", lambda *a, **k: loaded.append(a))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert main(["serve", str(tmp_path / "none"), "--port", str(port)]) == 2
    assert f"cannot listen on 127.0.0.1:{port}" in capsys.readouterr().err and not loaded
