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

    torch.manual_seed(0)
    g = glue_tasks()
    tasks = {
        "SST-2": g["SST-2"].model_copy(update={"max_seq_len": 16}),
        "CoLA": g["CoLA"].model_copy(update={"max_seq_len": 24}),
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
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "MTKD_API_KEY": "s3cret"}
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
        assert "API key required" in line and "localhost" in line
        with httpx.Client(base_url=m.group(1), timeout=60) as anonymous:
            assert anonymous.get("/health").status_code == 401  # $MTKD_API_KEY is the bearer token
        with httpx.Client(base_url=m.group(1), timeout=60, headers={"Authorization": "Bearer s3cret"}) as c:
            assert c.get("/health").json()["limits"]["max_texts"] == 3
            r = c.post("/predict", json={"texts": ["a fine film"]})
            assert r.status_code == 200 and r.json()["tasks"] == ["SST-2"]
            assert c.post("/predict", json={"texts": ["a"] * 4}).status_code == 413
            # a loopback server answers loopback names only (DNS rebinding)
            assert c.get("/health", headers={"Host": "rebind.example:80"}).status_code == 400
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


# ------------------------------------------------------------------------------ hostile clients
class Slow:
    """A model whose every call takes `seconds` and records the texts it ran (how many rows)."""

    def __init__(self, model, seconds: float):
        import threading

        self.model, self.tasks, self.tokenizer, self.encoder = model, model.tasks, model.tokenizer, model.encoder
        self.seconds, self.rows, self.started = seconds, 0, threading.Event()

    def run_batch(self, names, ids, mask, types):
        import time

        self.started.set()
        time.sleep(self.seconds)
        self.rows += len(ids)
        return self.model.run_batch(names, ids, mask, types)


def _raw_request(url: str, body: dict, host: str = "127.0.0.1"):
    """A socket that sent a whole POST /predict and is still open (the caller closes it)."""
    import socket

    port = int(url.rsplit(":", 1)[1])
    data = json.dumps(body).encode()
    s = socket.create_connection(("127.0.0.1", port))
    s.sendall(
        b"POST /predict HTTP/1.1\r\nHost: " + host.encode() + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(data)).encode() + b"\r\n\r\n" + data
    )
    return s


def _wait_for(fn, seconds: float = 20.0):
    import time

    deadline = time.time() + seconds
    while not fn():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.integration
def test_requests_whose_client_went_away_are_not_run(model):
    """Ten requests sent and dropped while the model is busy: none of their texts reaches the model,
    and a request after them is answered as soon as the running batch ends."""
    import time

    slow = Slow(model, 0.5)
    app = create_app(slow, max_wait_ms=0, max_batch=8, max_texts=8)
    with BackgroundServer(app) as u, httpx.Client(base_url=u, timeout=60) as c:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            first = pool.submit(c.post, "/predict", json={"texts": ["the first"], "tasks": ["SST-2"]})
            assert slow.started.wait(20)  # the first request is in the model now
            for i in range(10):
                _raw_request(u, {"texts": [f"dropped {i} {j}" for j in range(8)], "tasks": ["SST-2"]}).close()
            _wait_for(lambda: app.state.counters.abandoned == 10)
            t0 = time.time()
            r = c.post("/predict", json={"texts": ["after them"], "tasks": ["SST-2"]})
            waited = time.time() - t0
            assert first.result().status_code == 200
        assert r.status_code == 200 and waited < 3.0, waited  # one slow call, not ten more
        assert slow.rows == 2  # the first request's text and the last one's: none of the 80 dropped texts ran
        h = c.get("/health").json()
        assert h["abandoned"] == 10 and h["requests"] == 2


@pytest.mark.integration
def test_a_request_past_its_deadline_gets_504_and_is_not_run_later(model):
    slow = Slow(model, 1.5)
    app = create_app(slow, max_wait_ms=0, timeout_s=0.4)
    with BackgroundServer(app) as u, httpx.Client(base_url=u, timeout=60) as c:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            busy = pool.submit(c.post, "/predict", json={"texts": ["occupies the model"], "tasks": ["SST-2"]})
            assert slow.started.wait(20)
            r = c.post("/predict", json={"texts": ["waits in the queue"], "tasks": ["SST-2"]})
            assert r.status_code == 504 and "within 0.4 s" in r.json()["error"] and r.headers["Retry-After"] == "1"
            assert busy.result().status_code == 504  # its own answer came too late as well
        slow.seconds = 0.0
        _wait_for(lambda: slow.rows == 1)  # the model finished the first call, whose answer nobody waited for
        r = c.post("/predict", json={"texts": ["fine"], "tasks": ["SST-2"]})
        assert r.status_code == 200 and slow.rows == 2  # the queued request was dropped, never run
        assert c.get("/health").json()["timed_out"] == 2


@pytest.mark.integration
def test_a_full_queue_answers_503_with_retry_after(model):
    slow = Slow(model, 1.0)
    app = create_app(slow, max_wait_ms=0, max_batch=4, max_texts=4, max_queue=4)
    four = {"texts": ["a", "b", "c", "d"], "tasks": ["SST-2"]}
    with BackgroundServer(app) as u, httpx.Client(base_url=u, timeout=60) as c:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            running = pool.submit(c.post, "/predict", json=four)
            assert slow.started.wait(20)
            queued = pool.submit(c.post, "/predict", json=four)
            _wait_for(lambda: app.state.batcher.queued_texts == 4)
            r = c.post("/predict", json=four)
            assert r.status_code == 503 and r.headers["Retry-After"] == "1" and "--max-queue 4" in r.json()["error"]
            assert running.result().status_code == 200 and queued.result().status_code == 200
        assert c.get("/health").json()["busy"] == 1


@pytest.mark.integration
def test_slow_headers_are_cut_off(model):
    """A client sending its headers a byte at a time is disconnected at the header deadline."""
    import socket
    import time

    with BackgroundServer(create_app(model), header_timeout_s=0.5) as u:
        s = socket.create_connection(("127.0.0.1", int(u.rsplit(":", 1)[1])))
        s.settimeout(10)
        t0, closed = time.time(), False
        try:
            for byte in b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"x" * 40:
                s.sendall(bytes([byte]))
                time.sleep(0.1)
        except OSError:  # reset by the server
            closed = True
        if not closed:
            closed = s.recv(1024) == b""
        s.close()
        assert closed and time.time() - t0 < 4.5


@pytest.mark.integration
def test_connections_past_the_limit_get_503(model):
    import socket

    with BackgroundServer(create_app(model), max_connections=2) as u:
        port = int(u.rsplit(":", 1)[1])
        idle = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
        try:
            with httpx.Client(base_url=u, timeout=30) as c:
                assert c.get("/health").status_code == 503
        finally:
            for s in idle:
                s.close()


@pytest.mark.integration
def test_host_content_type_api_key_and_no_api_docs(model):
    from mtkd.serve import allowed_hosts_for

    app = create_app(model, api_key="s3cret")
    with (
        BackgroundServer(app) as u,
        httpx.Client(base_url=u, timeout=30) as anonymous,
        httpx.Client(base_url=u, timeout=30, headers={"Authorization": "Bearer s3cret"}) as c,
    ):
        r = anonymous.get("/tasks")
        assert (
            r.status_code == 401 and r.headers["WWW-Authenticate"] == "Bearer" and r.json()["field"] == "Authorization"
        )
        assert c.get("/tasks", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/tasks").status_code == 200
        for host in ("localhost:8000", "127.0.0.1", "[::1]:8000"):
            assert c.get("/health", headers={"Host": host}).status_code == 200, host
        r = c.get("/health", headers={"Host": "attacker.example"})
        assert r.status_code == 400 and r.json()["field"] == "Host"
        # a web page can POST text/plain or a form without a preflight: only JSON is taken
        for kind, body in (
            ("text/plain", '{"texts": ["a"]}'),
            ("application/x-www-form-urlencoded", "texts=a"),
            (None, '{"texts": ["a"]}'),
        ):
            headers = {"Content-Type": kind} if kind else {}
            r = c.post("/predict", content=body, headers=headers)
            assert r.status_code == 415 and r.json()["field"] == "Content-Type", (kind, r.text)
        assert (
            c.post(
                "/predict", content='{"texts": ["a"]}', headers={"Content-Type": "application/json; charset=utf-8"}
            ).status_code
            == 200
        )
        for path in ("/docs", "/redoc", "/openapi.json"):
            assert c.get(path).status_code == 404, path
    assert allowed_hosts_for("0.0.0.0") == ("*",) and allowed_hosts_for("10.1.2.3") == ("10.1.2.3",)
    assert "localhost" in allowed_hosts_for("127.0.0.1") and "attacker.example" not in allowed_hosts_for("127.0.0.1")


@pytest.mark.integration
def test_dropped_requests_leave_the_queue_at_once(model):
    """A request dropped (deadline or client gone) while the model is busy frees its place in the
    queue right away: the next request is not refused as busy."""
    slow = Slow(model, 1.5)
    app = create_app(slow, max_wait_ms=0, max_batch=8, max_texts=8, max_queue=16, timeout_s=0.5)
    eight = {"texts": [f"text {j}" for j in range(8)], "tasks": ["SST-2"]}
    with BackgroundServer(app) as u, httpx.Client(base_url=u, timeout=60) as c:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            busy = pool.submit(c.post, "/predict", json={"texts": ["busy"], "tasks": ["SST-2"]})
            assert slow.started.wait(20)
            assert c.post("/predict", json=eight).status_code == 504  # queued, then dropped at its deadline
            _raw_request(u, eight).close()  # queued, then its client leaves
            _wait_for(lambda: app.state.counters.abandoned == 1)
            assert app.state.batcher.queued == 0 and app.state.batcher.queued_texts == 0
            r = c.post("/predict", json=eight)
            assert r.status_code != 503, r.text
            busy.result()


@pytest.mark.integration
def test_a_body_trickled_after_the_answer_does_not_hold_the_connection(model):
    """A client answered before its body arrived (here: refused, 415) is disconnected, not kept
    alive while it trickles the rest in."""
    import socket
    import time

    with BackgroundServer(create_app(model), header_timeout_s=0.5) as u:
        s = socket.create_connection(("127.0.0.1", int(u.rsplit(":", 1)[1])))
        s.settimeout(10)
        s.sendall(
            b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: text/plain\r\nContent-Length: 100\r\n\r\n"
        )
        assert s.recv(4096).startswith(b"HTTP/1.1 415")
        closed = False
        try:
            for _ in range(20):
                s.sendall(b"x")
                time.sleep(0.1)
            closed = s.recv(1024) == b""
        except OSError:
            closed = True
        s.close()
        assert closed


def test_host_names_are_parsed_strictly():
    from mtkd.errors import ConfigError
    from mtkd.serve import host_name

    assert host_name("[::1]:8000") == "::1" and host_name("LocalHost:80") == "localhost" and host_name("::1") == "::1"
    for bad in ("[::1].attacker.example", "[::1]x:80", "a:b:c:d:e:g", "name:port", "", "user@host"):
        assert host_name(bad) is None, bad
    with pytest.raises(ConfigError, match="API key"):
        create_app(Slow.__new__(Slow), api_key="clé")
