"""`mtkd serve MODEL_OR_EXPORT_DIR`: an HTTP JSON API over a saved model, with micro-batching.

Endpoints (FastAPI + uvicorn, the optional extra `pip install 'mtkd[serve]'`):

    POST /predict  {"texts": [...], "pairs": [...], "tasks": [...], "probabilities": false}
                   -> {"model", "tasks", "results": [{task: {"label", "probabilities"} | {"score"}}, ...],
                       "truncated": {task: [indices]}}
    GET  /tasks    -> the model's tasks: name, kind, labels, inputs, max_len, output
    GET  /health   -> status and counters (requests, batches, texts per batch)

Requests: `texts` (required, 1..max_texts non-empty strings of at most max_chars characters);
`pairs` (the second texts, one per text) exactly when a requested task is a pair task (its
definition has a `text_b` field); `tasks` (default: every task whose input matches the request:
the pair tasks when `pairs` is given, else the single-text tasks); `probabilities` (classification
tasks also return every label's probability). Single-text tasks read `texts` only.

Results: one object per text, in order: classification tasks give {"label"} (and
{"probabilities": {label: p}}), regression tasks {"score"} (clipped to the task's label range), ranking
tasks {"score"} (the relevance score). Inputs longer than a task's max length (its trained length,
`mtkd.inference.train_max_len`: the saved `max_seq_len`, else 512; at most the encoder's positions)
are cut there, as in training; "truncated" maps each task that cut some input to the indices of
the texts it cut ({"Reviews": [0]}; {} when nothing was cut). Tasks of different lengths cut
different texts: a 20-token text is cut by a task trained at 16, not by one at 24.

Errors: a JSON body {"error": message, "field": the field it names}: 400 malformed JSON, 413 a
body, a text count or a text over the configured limits, 415 a body not sent as application/json
(a web page can POST text/plain or a form without a CORS preflight), 422 anything else that is not
a valid request (wrong type, unknown field or task, empty list or text, missing pairs). A failure
inside the model answers the requests of that batch with 500; the server keeps serving.

Guards: every request's Host header must be one the server answers to (400: by default the
loopback names on a loopback address, so a web page cannot reach it through DNS rebinding), and
with an API key (--api-key or $MTKD_API_KEY) it must carry `Authorization: Bearer <key>` (401).
Each /predict request has a deadline (--timeout-s): 408 if its body has not arrived by then, 504 if
its answer has not; a request whose client has gone, or whose deadline passed, is dropped from the
queue and never run. The queue holds at most --max-queue texts (503 with Retry-After past it). The
connection limits are uvicorn's and ours: at most --max-connections (503 past it), a request's
headers within HEADER_TIMEOUT_S, idle keep-alive connections closed after KEEP_ALIVE_S. There are no
/docs, /redoc or /openapi.json pages.

Micro-batching: requests wait in a queue; one worker takes what is queued, waiting up to
`max_wait_ms` after the first request for more until `max_batch` texts, and runs them in a worker
thread, so the event loop keeps accepting requests meanwhile: per input kind (texts / text pairs)
and task length, the texts are tokenised once and run in length-sorted batches (mtkd.inference);
the results are split back per request. A request is never split (one larger than max_batch runs
alone, in encoder batches of max_batch).

The model is anything with `.tasks` ({name: TaskSpec}), `.tokenizer` and `.run_batch` (the prediction
side's model call, as `MTModel.run_batch`): `load_for_serving` gives an `MTModel` for a model folder or
an `OnnxModel` (mtkd.onnx_model) for an ONNX export folder.
"""

# no `from __future__ import annotations`: FastAPI reads the endpoints' annotations (Request) at runtime
import asyncio
import collections
import concurrent.futures
import contextlib
import hmac
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mtkd import inference
from mtkd.errors import CheckpointError, ConfigError, did_you_mean
from mtkd.heads import kind_of
from mtkd.tasks import TaskSpec

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 64  # texts per model call
DEFAULT_MAX_TOKENS = 8192  # padded tokens per model call (long texts go in smaller batches)
DEFAULT_MAX_WAIT_MS = 5.0  # how long the first queued request waits for company
DEFAULT_MAX_TEXTS = 256  # per request
DEFAULT_MAX_CHARS = 20000  # per text (and per pair)
DEFAULT_MAX_BODY_BYTES = 16 * 2**20
DEFAULT_TIMEOUT_S = 30.0  # a request is answered within this (queue, model and body upload), else 504/408
DEFAULT_MAX_QUEUE = 1024  # texts waiting for the model; a request that would pass it gets 503 + Retry-After
DEFAULT_MAX_CONNECTIONS = 256  # open connections; past it uvicorn answers 503
HEADER_TIMEOUT_S = 10.0  # a request's headers must arrive within this, else the connection is closed
KEEP_ALIVE_S = 5  # an idle keep-alive connection is closed after this
API_KEY_ENV = "MTKD_API_KEY"  # the bearer token, when set (mtkd serve --api-key has the same effect)
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
INSTALL_HINT = "mtkd serve needs FastAPI and uvicorn: pip install 'mtkd[serve]'"
REQUEST_FIELDS = ("texts", "pairs", "tasks", "probabilities")


def _require_server_stack():
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as e:
        raise ConfigError(f"{INSTALL_HINT} ({e})") from None


# ---------------------------------------------------------------------------------- the model
def load_for_serving(path: str | Path, device: str | None = None):
    """(model, backend) for a folder: an ONNX export (it holds mtkd_export.json) -> mtkd.onnx_model's
    OnnxModel, 'onnx'; an mtkd model folder (config.json with "format": "mtkd") -> MTModel, 'pytorch',
    in eval mode on `device` (default: CUDA when available, else the CPU)."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such folder (give an mtkd model folder or an ONNX export folder)")
    from mtkd.onnx_model import OnnxModel, is_export  # torch-free; a missing onnxruntime is refused when loading

    if is_export(path):
        return OnnxModel.from_pretrained(path), "onnx"
    if (path / "config.json").is_file():
        import torch

        from mtkd.model import MTModel

        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        return MTModel.from_pretrained(path).eval().to(device), "pytorch"
    raise CheckpointError(
        f"{path}: neither an mtkd model folder (config.json, model.safetensors) nor an ONNX export (mtkd_export.json)"
    )


def is_pair_task(spec: TaskSpec) -> bool:
    return "text_b" in spec.fields


def position_limit(model) -> int | None:
    """Most tokens the model's encoder takes (None: no limit known). An ONNX export records it
    (`max_positions`), so serving one never imports torch."""
    config = getattr(getattr(model, "encoder", None), "config", None)
    if config is not None:
        from mtkd.encoders import max_positions

        return max_positions(config)
    limit = getattr(model, "max_positions", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else None


def task_max_len(model, spec: TaskSpec) -> int:
    """A task's input length at serving time: the length it was trained at (`mtkd.inference.train_max_len`:
    its saved max_seq_len, else 512), at most the encoder's positions."""
    return inference.served_max_len(spec, position_limit(model))


def describe_tasks(model) -> list[dict]:
    out = []
    for name, spec in model.tasks.items():
        out.append(
            {
                "name": name,
                "kind": spec.head.value,
                "inputs": ["text", "pair"] if is_pair_task(spec) else ["text"],
                "max_len": task_max_len(model, spec),
                **kind_of(spec).describe(),
            }
        )
    return out


# ------------------------------------------------------------------------------ validation
class RequestError(Exception):
    """A bad request: HTTP status, message (naming the field) and the field."""

    def __init__(self, status: int, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.message, self.field = status, message, field


def _json_kind(v) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, (int, float)):
        return "a number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, (list, tuple)):
        return "a list"
    if isinstance(v, dict):
        return "an object"
    return type(v).__name__


def _loc(loc: Sequence) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(request body)"


def _pydantic_message(err: dict) -> tuple[str, str]:
    """(field, message) for one pydantic error."""
    where, kind, got = _loc(err.get("loc", ())), err.get("type", ""), err.get("input")
    if kind == "missing":
        return where, f'{where}: missing (a request needs at least "texts": [...])'
    if kind == "extra_forbidden":
        return where, f"{where}: unknown field (a request has {', '.join(REQUEST_FIELDS)})"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return where, f"{where}: expected a JSON object, got {_json_kind(got)}"
    if kind == "list_type":
        return where, f"{where}: expected a list of strings, got {_json_kind(got)}"
    if kind == "string_type":
        return where, f"{where}: expected a string, got {_json_kind(got)}"
    if kind == "bool_type":
        return where, f"{where}: expected true or false, got {_json_kind(got)}"
    return where, f"{where}: {err.get('msg', 'invalid')}"


@dataclass(eq=False)  # a job is itself, not its texts: the queue removes exactly this one
class Job:
    """One validated /predict request."""

    texts: list[str]
    pairs: list[str] | None
    tasks: list[str]
    probabilities: bool
    arrived: float = 0.0
    future: Any = None


def _request_model():
    from pydantic import BaseModel, ConfigDict

    class PredictRequest(BaseModel):
        model_config = ConfigDict(extra="forbid", strict=True)
        texts: list[str]
        pairs: list[str] | None = None
        tasks: list[str] | None = None
        probabilities: bool = False

    return PredictRequest


class Validator:
    def __init__(self, model, max_texts: int, max_chars: int):
        self.model, self.max_texts, self.max_chars = model, int(max_texts), int(max_chars)
        self.pair_tasks = [t for t, s in model.tasks.items() if is_pair_task(s)]
        self.single_tasks = [t for t, s in model.tasks.items() if not is_pair_task(s)]
        self.schema = _request_model()

    def parse(self, body: bytes) -> Job:
        from pydantic import ValidationError

        if not body.strip():
            raise RequestError(
                400,
                'malformed JSON: the request body is empty; send a JSON object such as {"texts": ["a gripping film"]}',
                "(request body)",
            )
        try:
            req = self.schema.model_validate_json(body)
        except ValidationError as e:
            errors = e.errors(include_url=False)
            bad_json = [x for x in errors if x.get("type") == "json_invalid"]
            if bad_json:
                why = (bad_json[0].get("ctx") or {}).get("error") or bad_json[0].get("msg", "")
                raise RequestError(400, f"malformed JSON: {why}", "(request body)") from None
            msgs = [_pydantic_message(x) for x in errors]
            more = f" (and {len(msgs) - 3} more)" if len(msgs) > 3 else ""
            raise RequestError(422, "; ".join(m for _, m in msgs[:3]) + more, msgs[0][0]) from None
        except UnicodeDecodeError:
            raise RequestError(400, "malformed JSON: the body is not UTF-8", "(request body)") from None
        self._texts("texts", req.texts)
        tasks = self._tasks(req.tasks, req.pairs is not None)
        if req.pairs is not None:
            self._texts("pairs", req.pairs)
            if len(req.pairs) != len(req.texts):
                raise RequestError(
                    422,
                    f"pairs: {len(req.texts)} texts but {len(req.pairs)} pairs; give one second text per text",
                    "pairs",
                )
        return Job(list(req.texts), list(req.pairs) if req.pairs is not None else None, tasks, bool(req.probabilities))

    def _tasks(self, asked: list[str] | None, has_pairs: bool) -> list[str]:
        if asked is None:
            tasks = self.pair_tasks if has_pairs else self.single_tasks
            if not tasks:
                if has_pairs:
                    raise RequestError(
                        422,
                        f"pairs: this model has no pair task (its tasks {', '.join(self.single_tasks)} "
                        f"read one text); drop pairs",
                        "pairs",
                    )
                raise RequestError(
                    422,
                    f"pairs: missing; every task of this model ({', '.join(self.pair_tasks)}) is "
                    f"a pair task: give one second text per text",
                    "pairs",
                )
            return list(tasks)
        if not asked:
            raise RequestError(
                422,
                f"tasks: empty list; name at least one of {', '.join(self.model.tasks)} (or leave tasks out)",
                "tasks",
            )
        for i, t in enumerate(asked):
            if t not in self.model.tasks:
                raise RequestError(
                    422,
                    f"tasks[{i}]: unknown task {t!r}{did_you_mean(t, self.model.tasks)}; this model has "
                    f"{', '.join(self.model.tasks)}",
                    f"tasks[{i}]",
                )
        tasks = list(dict.fromkeys(asked))
        pair = [t for t in tasks if t in self.pair_tasks]
        if pair and not has_pairs:
            raise RequestError(
                422,
                f"pairs: missing; {', '.join(pair)} {'is a pair task' if len(pair) == 1 else 'are pair tasks'}: "
                f'give one second text per text in "pairs"',
                "pairs",
            )
        if has_pairs and not pair:
            raise RequestError(
                422,
                f"pairs: given, but no requested task reads a second text ({', '.join(tasks)}); "
                f"drop pairs or ask for a pair task",
                "pairs",
            )
        return tasks

    def _texts(self, name: str, values: list[str]) -> None:
        if not values:
            raise RequestError(422, f"{name}: empty list; give at least one text", name)
        if len(values) > self.max_texts:
            raise RequestError(
                413,
                f"{name}: {len(values)} texts, over this server's limit of {self.max_texts} per "
                f"request (mtkd serve --max-texts); send them in several requests",
                name,
            )
        for i, t in enumerate(values):
            if not t.strip():
                raise RequestError(422, f"{name}[{i}]: empty text", f"{name}[{i}]")
            if len(t) > self.max_chars:
                raise RequestError(
                    413,
                    f"{name}[{i}]: {len(t)} characters, over this server's limit of "
                    f"{self.max_chars} per text (mtkd serve --max-chars)",
                    f"{name}[{i}]",
                )
            try:
                t.encode("utf-8")
            except UnicodeEncodeError:
                raise RequestError(
                    422, f"{name}[{i}]: not valid Unicode (a lone surrogate escape)", f"{name}[{i}]"
                ) from None


# ---------------------------------------------------------------------------- batch runner
class BatchRunner:
    """Runs a list of jobs through the model: per (input kind, max length), the concatenated texts
    of the jobs that asked for such tasks are tokenised once and run in length-sorted batches
    (mtkd.inference), then each job gets its own tasks' answers (their head kind's `answer_json`)
    and the indices of its texts that were cut."""

    def __init__(self, model, max_batch: int):
        self.model, self.max_batch = model, int(max_batch)
        if hasattr(model, "eval"):  # a PyTorch model answers without dropout
            model.eval()
        self.max_len = {t: task_max_len(model, s) for t, s in model.tasks.items()}
        self.pair = {t: is_pair_task(s) for t, s in model.tasks.items()}

    def __call__(self, jobs: list[Job]) -> list[dict]:
        groups: dict[tuple[bool, int], list[str]] = collections.defaultdict(list)
        for job in jobs:
            for t in job.tasks:
                key = (self.pair[t], self.max_len[t])
                if t not in groups[key]:
                    groups[key].append(t)
        per_job: list[list[dict]] = [[{} for _ in job.texts] for job in jobs]
        truncated: list[dict[str, list[int]]] = [{} for _ in jobs]
        for (paired, max_len), tasks in groups.items():
            members = [i for i, job in enumerate(jobs) if any(t in tasks for t in job.tasks)]
            texts = [x for i in members for x in jobs[i].texts]
            pairs = [x for i in members for x in jobs[i].pairs] if paired else None
            logits, cut = inference.text_logits(
                self.model.tokenizer,
                self.model.run_batch,
                self.model.tasks,
                tasks,
                texts,
                pairs,
                max_len,
                self.max_batch,
                DEFAULT_MAX_TOKENS,
            )
            start = 0
            for i in members:
                job, n = jobs[i], len(jobs[i].texts)
                cut_here = [r for r in range(n) if cut[start + r]]
                for t in (t for t in job.tasks if t in tasks):
                    kind = kind_of(self.model.tasks[t])
                    for r in range(n):
                        per_job[i][r][t] = kind.answer_json(logits[t][start + r], job.probabilities)
                    if cut_here:
                        truncated[i][t] = cut_here
                start += n
        # the results (and "truncated") keep the order of each job's tasks
        return [
            {
                "tasks": job.tasks,
                "results": [{t: row[t] for t in job.tasks} for row in per_job[i]],
                "truncated": {t: truncated[i][t] for t in job.tasks if t in truncated[i]},
            }
            for i, job in enumerate(jobs)
        ]


@dataclass
class Counters:
    started: float = field(default_factory=time.time)
    requests: int = 0  # /predict requests answered with results
    rejected: int = 0  # 4xx
    failed: int = 0  # 5xx
    timed_out: int = 0  # 504: no answer within the deadline
    abandoned: int = 0  # the client went away before its answer (not run when it was still queued)
    busy: int = 0  # 503: the queue was full
    batches: int = 0
    batched_requests: int = 0
    texts: int = 0
    largest_batch: int = 0

    def as_dict(self) -> dict:
        return {
            "uptime_s": round(time.time() - self.started, 3),
            "requests": self.requests,
            "rejected": self.rejected,
            "failed": self.failed,
            "timed_out": self.timed_out,
            "abandoned": self.abandoned,
            "busy": self.busy,
            "batches": self.batches,
            "texts": self.texts,
            "mean_batch_texts": round(self.texts / self.batches, 3) if self.batches else None,
            "mean_batch_requests": round(self.batched_requests / self.batches, 3) if self.batches else None,
            "largest_batch_texts": self.largest_batch,
        }


class MicroBatcher:
    """The queue and its one worker: takes what is queued, waits up to max_wait after the first
    queued request for more until max_batch texts, runs the batch in a worker thread."""

    def __init__(self, run: Callable[[list[Job]], list[dict]], max_batch: int, max_wait_ms: float, counters: Counters):
        self.run, self.max_batch, self.max_wait = run, max(1, int(max_batch)), max(0.0, float(max_wait_ms)) / 1000
        self.counters = counters
        self._pending: collections.deque[Job] = collections.deque()
        self._queued_texts = 0
        self._event: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="mtkd-model")

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def queued_texts(self) -> int:
        return self._queued_texts

    def start(self) -> None:
        self._event = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._worker(), name="mtkd-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for job in self._pending:
            if not job.future.done():
                job.future.set_exception(RuntimeError("the server is shutting down"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(self, job: Job, timeout_s: float, gone: Callable[[], Awaitable[None]]) -> dict:
        """The job's answer. Raises TimeoutError when none came within `timeout_s`, ClientGone when
        `gone()` returned first; either way a job still queued is dropped, not run."""
        loop = asyncio.get_running_loop()
        job.arrived, job.future = loop.time(), loop.create_future()
        self._pending.append(job)
        self._queued_texts += len(job.texts)
        self._event.set()
        watcher = asyncio.ensure_future(gone())
        try:
            await asyncio.wait({job.future, watcher}, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:  # the handler was cancelled (the server stops)
            self._drop(job)
            raise
        finally:
            watcher.cancel()
        if job.future.done() and not job.future.cancelled():
            return job.future.result()
        self._drop(job)
        raise ClientGone() if watcher.done() and not watcher.cancelled() else TimeoutError()

    def _drop(self, job: Job) -> None:
        """Nobody waits for `job` any more: out of the queue (and its texts off the queue's count); a
        batch already running it discards its answer."""
        job.future.cancel()
        try:
            self._pending.remove(job)
        except ValueError:  # already taken by a batch
            return
        self._queued_texts -= len(job.texts)

    def _take(self) -> list[Job]:
        batch, n = [], 0
        while self._pending and (not batch or n + len(self._pending[0].texts) <= self.max_batch):
            job = self._pending.popleft()
            self._queued_texts -= len(job.texts)
            if job.future.done():  # answered already (the server is stopping)
                continue
            batch.append(job)
            n += len(job.texts)
        return batch

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._event.clear()
                await self._event.wait()
                continue
            deadline = self._pending[0].arrived + self.max_wait
            while self._queued_texts < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._event.clear()
                try:
                    await asyncio.wait_for(self._event.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch = self._take()
            if not batch:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self.run, batch)
            except Exception as e:  # the model failed: answer this batch with 500, keep serving
                log.exception("a batch of %d requests failed", len(batch))
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(e)
                continue
            c = self.counters
            c.batches += 1
            c.batched_requests += len(batch)
            n = sum(len(j.texts) for j in batch)
            c.texts += n
            c.largest_batch = max(c.largest_batch, n)
            for job, res in zip(batch, results, strict=False):
                if not job.future.done():
                    job.future.set_result(res)


# -------------------------------------------------------------------------------- the app
class ClientGone(Exception):
    """The client closed its connection before its answer was ready."""


def _disconnect_of(request):
    """An awaitable that returns once the client of `request` (whose body has been read) disconnects."""

    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return gone


def allowed_hosts_for(host: str) -> tuple[str, ...]:
    """The Host headers a server bound to `host` accepts by default: the loopback names for a loopback
    address (a web page elsewhere cannot reach it through DNS rebinding), the address itself for a
    specific one, any for a wildcard (0.0.0.0, ::), where the reachable names are not known."""
    if host in ("0.0.0.0", "::", ""):
        return ("*",)
    if host in LOOPBACK_HOSTS or host.startswith("127."):
        return LOOPBACK_HOSTS + ((host,) if host not in LOOPBACK_HOSTS else ())
    return (host,)


_HOST = re.compile(
    r"\[(?P<v6>[0-9a-f:.]+)\](?::\d+)?|(?P<name>[^:\[\]\s/@]+)(?::\d+)?|(?P<bare6>[0-9a-f]*:[0-9a-f:.]+)"
)


def host_name(value: str) -> str | None:
    """A Host header's (or an allowed host's) name, lower case, without port or brackets:
    '[::1]:8000' -> '::1', 'LocalHost:80' -> 'localhost'; None for anything else."""
    m = _HOST.fullmatch(value.strip().lower())
    return None if m is None else m["v6"] or m["name"] or m["bare6"]


class _Guard:
    """Before any endpoint (pure ASGI, so a disconnect still reaches the endpoint): the Host header
    must be an allowed one, and with an API key the request must carry it as a bearer token."""

    def __init__(self, app, hosts: Sequence[str], api_key: str | None, refuse: Callable):
        self.app, self.api_key, self.refuse = app, api_key, refuse
        self.any_host = "*" in hosts
        self.hosts = {host_name(h) for h in hosts if h != "*"} - {None}

    def _host_ok(self, host: str) -> bool:
        return self.any_host or host_name(host) in self.hosts

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
            if not self._host_ok(headers.get("host", "")):
                return await self.refuse(
                    400,
                    f"Host header {headers.get('host', '')!r} is not one this server answers "
                    f"to (mtkd serve --allowed-host)",
                    "Host",
                )(scope, receive, send)
            if self.api_key is not None:
                scheme, _, token = headers.get("authorization", "").partition(" ")
                if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                    return await self.refuse(
                        401,
                        "missing or wrong API key: send the header 'Authorization: Bearer <key>'",
                        "Authorization",
                        {"WWW-Authenticate": "Bearer"},
                    )(scope, receive, send)
        await self.app(scope, receive, send)


def _check_limits(max_batch, max_wait_ms, max_texts, max_chars, max_body_bytes, timeout_s, max_queue) -> None:
    for label, v in (
        ("max_batch", max_batch),
        ("max_texts", max_texts),
        ("max_chars", max_chars),
        ("max_body_bytes", max_body_bytes),
        ("max_queue", max_queue),
    ):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ConfigError(f"serve: {label} must be a positive integer, got {v!r}")
    if not max_wait_ms >= 0:
        raise ConfigError(f"serve: max_wait_ms must be >= 0, got {max_wait_ms!r}")
    if not timeout_s > 0:
        raise ConfigError(f"serve: timeout_s must be > 0, got {timeout_s!r}")


async def _read_body(request, max_body_bytes: int) -> bytes:
    """The request body, refused (413) past `max_body_bytes`: by its declared length before reading,
    else while it streams in, so an oversized body is never held in memory whole."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise RequestError(
            413,
            f"request body: {int(declared)} bytes, over this server's limit of "
            f"{max_body_bytes} bytes (mtkd serve --max-body-mb)",
            "(request body)",
        )
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_body_bytes:
            raise RequestError(
                413,
                f"request body: over this server's limit of {max_body_bytes} bytes (mtkd serve --max-body-mb)",
                "(request body)",
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _lifespan(batcher: MicroBatcher, on_ready: Callable[[], None] | None):
    """The app's lifespan: the batcher's worker runs while the server does (on_ready once it is up)."""

    @contextlib.asynccontextmanager
    async def lifespan(app):
        batcher.start()
        if on_ready is not None:
            on_ready()
        try:
            yield
        finally:
            await batcher.stop()

    return lifespan


def create_app(
    model,
    *,
    name: str = "",
    backend: str = "pytorch",
    max_batch: int = DEFAULT_MAX_BATCH,
    max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
    max_texts: int = DEFAULT_MAX_TEXTS,
    max_chars: int = DEFAULT_MAX_CHARS,
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    max_queue: int = DEFAULT_MAX_QUEUE,
    allowed_hosts: Sequence[str] = LOOPBACK_HOSTS,
    api_key: str | None = None,
    on_ready: Callable[[], None] | None = None,
):
    """The FastAPI app serving `model` (see the module docstring for the API). `allowed_hosts`: the
    Host headers it answers ("*": any); `api_key`: the bearer token every request must carry."""
    _require_server_stack()
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    _check_limits(max_batch, max_wait_ms, max_texts, max_chars, max_body_bytes, timeout_s, max_queue)
    if api_key is not None and not (
        api_key.isascii() and api_key.isprintable() and api_key.strip() == api_key and api_key
    ):
        raise ConfigError("serve: the API key must be printable ASCII, without spaces around it")
    bad_hosts = [h for h in allowed_hosts if h != "*" and host_name(h) is None]
    if bad_hosts:
        raise ConfigError(f"serve: --allowed-host {bad_hosts[0]!r} is not a host name or address")
    counters = Counters()
    validator = Validator(model, max_texts, max_chars)
    batcher = MicroBatcher(BatchRunner(model, max_batch), max_batch, max_wait_ms, counters)
    tasks_doc = describe_tasks(model)
    limits = {
        "max_texts": max_texts,
        "max_chars": max_chars,
        "max_body_bytes": max_body_bytes,
        "max_batch": max_batch,
        "max_wait_ms": max_wait_ms,
        "timeout_s": timeout_s,
        "max_queue": max_queue,
    }
    # no /docs, /redoc or /openapi.json: the API is documented in the module docstring and docs/
    app = FastAPI(
        title="mtkd",
        description="Predictions of an mtkd multi-task model",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=_lifespan(batcher, on_ready),
    )
    app.state.counters, app.state.batcher, app.state.model = counters, batcher, model

    def error(status: int, message: str, where: str | None = None, headers: dict | None = None) -> JSONResponse:
        if status >= 500:
            counters.failed += 1
        else:
            counters.rejected += 1
        return JSONResponse(
            {"error": message, **({"field": where} if where else {})}, status_code=status, headers=headers
        )

    def busy(status: int, message: str) -> JSONResponse:
        """A refusal the client should retry a little later (503, 504)."""
        return error(status, message, headers={"Retry-After": "1"})

    app.add_middleware(_Guard, hosts=allowed_hosts, api_key=api_key, refuse=error)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return error(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}")

    # the endpoints declare no parameters FastAPI would validate (the body is read and checked by
    # Validator), so FastAPI's own RequestValidationError never arises
    @app.post("/predict")
    async def predict(request: Request):
        """{"texts", "pairs", "tasks", "probabilities"} -> {"model", "tasks", "results": one {task: result}
        per text, "truncated": {task: [indices of the texts it cut at its max length]} (only the tasks
        that cut something; {} when none did)}; bad requests get {"error", "field"} (400 / 413 / 422)."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            return error(
                415,
                f"Content-Type {kind or '(none)'!r}: send the request as JSON with 'Content-Type: application/json'",
                "Content-Type",
            )
        start = time.monotonic()
        try:
            job = validator.parse(await asyncio.wait_for(_read_body(request, max_body_bytes), timeout_s))
        except asyncio.TimeoutError:
            return error(
                408, f"request body: not received within {timeout_s:g} s (mtkd serve --timeout-s)", "(request body)"
            )
        except RequestError as e:
            return error(e.status, e.message, e.field)
        if batcher.queued_texts + len(job.texts) > max_queue and batcher.queued:
            counters.busy += 1
            return busy(
                503,
                f"the server is busy: {batcher.queued_texts} texts are waiting (mtkd serve "
                f"--max-queue {max_queue}); retry shortly",
            )
        try:
            res = await batcher.submit(job, timeout_s - (time.monotonic() - start), _disconnect_of(request))
        except TimeoutError:
            counters.timed_out += 1
            return busy(
                504,
                f"no answer within {timeout_s:g} s (mtkd serve --timeout-s): the server is busy; "
                f"retry later, or send fewer texts",
            )
        except ClientGone:
            counters.abandoned += 1
            return JSONResponse({"error": "the client closed the connection"}, status_code=499)  # nobody reads it
        except Exception as e:
            return error(500, f"the model failed on this batch: {type(e).__name__}: {e}")
        counters.requests += 1
        return {"model": name, **res}

    @app.get("/tasks")
    async def tasks():
        return {"model": name, "backend": backend, "tasks": tasks_doc}

    @app.get("/health")
    async def health():
        return {
            "status": "ok",
            "model": name,
            "backend": backend,
            **counters.as_dict(),
            "queued": batcher.queued,
            "limits": limits,
        }

    return app


# ------------------------------------------------------------------------------ the server
def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket (port 0: a free port), so the real port is known before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets; without it, Nagle's
    # algorithm holds the response body behind its headers for the client's delayed ACK (~40 ms)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(f"serve: cannot listen on {host}:{port} ({e.strerror or e})") from None
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def _http_protocol(header_timeout_s: float):
    """uvicorn's HTTP/1.1 protocol, with a deadline for each request's headers: a client that sends
    them slowly (a byte every few seconds, to hold connections open) is disconnected."""
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class DeadlineH11Protocol(H11Protocol):
        header_deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self.conn.their_state is h11.IDLE:  # still reading a request's headers
                if self.header_deadline is None:
                    self._arm()
            else:
                self._disarm()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.conn.their_state is h11.SEND_BODY:  # answered before its body arrived (408, 415, 401):
                # the rest of the body gets the header deadline, then the connection closes (at once would
                # reset a client still sending a small body and lose the answer it is about to read)
                self.loop.call_later(header_timeout_s, self._close_if_body_still_arriving)

        def _close_if_body_still_arriving(self) -> None:
            if self.conn.their_state is h11.SEND_BODY and not self.transport.is_closing():
                self.transport.close()

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self.header_deadline = self.loop.call_later(header_timeout_s, self.transport.close)

        def _disarm(self) -> None:
            if self.header_deadline is not None:
                self.header_deadline.cancel()
                self.header_deadline = None

    return DeadlineH11Protocol


def make_server(
    app,
    sock: socket.socket,
    access_log: bool = False,
    log_level: str = "warning",
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    header_timeout_s: float = HEADER_TIMEOUT_S,
):
    """A uvicorn.Server for `app` on `sock` (run it with server.run(sockets=[sock])): at most
    `max_connections` open connections (503 past it), headers within `header_timeout_s`, idle
    keep-alive connections closed after KEEP_ALIVE_S."""
    import uvicorn

    host, port = sock.getsockname()[:2]
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        access_log=access_log,
        log_level=log_level,
        timeout_graceful_shutdown=5,
        lifespan="on",
        limit_concurrency=max_connections,
        timeout_keep_alive=KEEP_ALIVE_S,
        http=_http_protocol(header_timeout_s),
    )
    return uvicorn.Server(config)


def serve(
    path: str | Path,
    host: str = "127.0.0.1",
    port: int = 8000,
    *,
    access_log: bool = False,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    allowed_hosts: Sequence[str] | None = None,
    api_key: str | None = None,
    print_fn: Callable[[str], None] = print,
    **limits,
) -> None:
    """Load the model at `path` and serve it until interrupted (SIGINT/SIGTERM). The port is bound
    first, so an address in use is refused before a long model load. `allowed_hosts` (default:
    `allowed_hosts_for(host)`) and `api_key` (default: $MTKD_API_KEY) guard every request; `limits` are
    create_app's (max_batch, max_wait_ms, max_texts, max_chars, max_body_bytes, timeout_s, max_queue)."""
    _require_server_stack()
    api_key = api_key or os.environ.get(API_KEY_ENV) or None
    hosts = tuple(allowed_hosts) if allowed_hosts else allowed_hosts_for(host)
    sock = bind_socket(host, port)
    try:
        model, backend = load_for_serving(path)
    except BaseException:
        sock.close()
        raise
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host

    def ready():
        print_fn(
            f"mtkd serve: {path} ({backend}; tasks {', '.join(model.tasks)}) on http://{shown}:{bound} "
            f"(POST /predict, GET /tasks, GET /health; Host {', '.join(hosts)}"
            f"{'; API key required' if api_key else ''})"
        )

    app = create_app(
        model, name=str(path), backend=backend, allowed_hosts=hosts, api_key=api_key, on_ready=ready, **limits
    )
    server = make_server(
        app, sock, access_log=access_log, log_level="info" if access_log else "warning", max_connections=max_connections
    )
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()


class BackgroundServer:
    """The app served by uvicorn in a daemon thread on a free loopback port (tests, benchmarks):
    `with BackgroundServer(app) as url: ...`."""

    def __init__(self, app, host: str = "127.0.0.1", **server_options):
        self.app, self.host = app, host
        self.sock = bind_socket(host, 0)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://{host}:{self.port}"
        self.server = make_server(app, self.sock, **server_options)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True, name="mtkd-serve"
        )

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.01)
        return self.url

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()
