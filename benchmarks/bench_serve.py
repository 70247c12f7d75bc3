"""`mtkd serve` under load on loopback: requests/s, p50/p99 latency, zero 5xx, every good answer
correct, server memory flat.

The server runs as `mtkd serve MODEL --port 0` in a subprocess (its own process, as deployed). The
load generator (one asyncio process, httpx.AsyncClient) runs each concurrency level for a bounded
time: every client sends its next request as soon as the previous one is answered. Requests are a
fixed, seeded pool built from real dev texts (GLUE SST-2 for the single-text tasks, MRPC/STS-B/RTE
pairs for the pair tasks): mostly single texts, some batches of 2-16 and a few of 32-64, some with
probabilities; every `--bad-every`-th request is a bad input (malformed JSON, an unknown task, an
empty list, an empty string, a missing pair, over the text or character limit, a wrong type).

Every good answer is checked against `MTModel.predict` on the same texts, computed in this process
before the load starts (labels equal, probabilities and scores within 1e-4); every bad input must
get its expected 4xx. The server's RSS (psutil, else /proc/<pid>/status) is sampled every 0.5 s.

    python benchmarks/bench_serve.py                       # runs/demo/seed-42/mtl/model, 60 s per level, 1/8/32 clients
    python benchmarks/bench_serve.py --seconds 10 --clients 1,8
    python benchmarks/bench_serve.py --quick               # tiny random model, 2 s per level (the smoke test)

Writes <out>/serve.json (default results/bench) and prints a table. Exit status 1 when a 5xx, a
wrong answer or a wrong status was seen.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info  # noqa: E402
from reporting import md_table, write_json  # noqa: E402
from suite import DEFAULT_OUT, REPO, default_data_root  # noqa: E402

NAME = "serve"
DEFAULT_MODEL = REPO / "runs" / "demo" / "seed-42" / "mtl" / "model"
MAX_TEXTS, MAX_CHARS = 64, 4000  # the server's limits in this benchmark (the bad inputs go over them)
TOLERANCE = 1e-4


# ------------------------------------------------------------------------------------- inputs
def dev_texts(data_root: Path, n: int, seed: int) -> tuple[list[str], list[tuple[str, str]]]:
    """(single texts, (text, pair) pairs) from the GLUE dev files (SST-2; MRPC, STS-B, RTE), or
    synthetic sentences when the files are not there."""
    from mtkd.data import read_split
    from mtkd.tasks import glue_tasks

    rng = random.Random(seed)
    specs = glue_tasks()
    singles, pairs = [], []
    try:
        singles = list(read_split(specs["SST-2"], "dev", data_root).text_a)
        for t in ("MRPC", "STS-B", "RTE"):
            raw = read_split(specs[t], "dev", data_root)
            pairs += list(zip(raw.text_a, raw.text_b, strict=True))
    except Exception as e:  # no GLUE files: synthetic text
        print(f"(no GLUE dev files under {data_root}: {type(e).__name__}; using synthetic sentences)", file=sys.stderr)
        words = "the a film plot cast story was good bad dull great fine awful lovely poor show man plays music".split()
        singles = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 30))) for _ in range(n)]
        pairs = [(s, " ".join(rng.choice(words) for _ in range(rng.randint(3, 15)))) for s in singles]
    rng.shuffle(singles)
    rng.shuffle(pairs)
    return singles[:n], pairs[:n]


def request_pool(model, singles, pairs, n_requests: int, seed: int) -> list[dict]:
    """Seeded requests: 60 % one text, 30 % 2-16 texts, 10 % 32-64 texts; single-text tasks on
    `singles`, pair tasks on `pairs`; a third ask for probabilities."""
    from mtkd.serve import is_pair_task

    rng = random.Random(seed)
    single_tasks = [t for t, s in model.tasks.items() if not is_pair_task(s)]
    pair_tasks = [t for t, s in model.tasks.items() if is_pair_task(s)]
    pool = []
    for _ in range(n_requests):
        r = rng.random()
        k = 1 if r < 0.6 else (rng.randint(2, 16) if r < 0.9 else rng.randint(32, MAX_TEXTS))
        use_pairs = bool(pair_tasks) and (not single_tasks or rng.random() < 0.5)
        if use_pairs:
            start = rng.randrange(len(pairs))
            chosen = [pairs[(start + j) % len(pairs)] for j in range(k)]
            tasks = rng.sample(pair_tasks, rng.randint(1, len(pair_tasks)))
            req = {
                "texts": [a[:MAX_CHARS] for a, _ in chosen],
                "pairs": [b[:MAX_CHARS] for _, b in chosen],
                "tasks": tasks,
            }
        else:
            start = rng.randrange(len(singles))
            req = {
                "texts": [singles[(start + j) % len(singles)][:MAX_CHARS] for j in range(k)],
                "tasks": rng.sample(single_tasks, rng.randint(1, len(single_tasks))),
            }
        req["probabilities"] = rng.random() < 1 / 3
        pool.append(req)
    return pool


def bad_inputs(model) -> list[tuple[str, bytes, int]]:
    """(name, body, expected status) of the bad inputs mixed into the load."""
    from mtkd.serve import is_pair_task

    single = next((t for t, s in model.tasks.items() if not is_pair_task(s)), None)
    pair = next((t for t, s in model.tasks.items() if is_pair_task(s)), None)
    any_task = single or pair
    extra = {"pairs": ["b"]} if single is None else {}
    bad = [
        ("malformed JSON", b'{"texts": ["a", ', 400),
        ("unknown task", json.dumps({"texts": ["a"], "tasks": ["NO-SUCH-TASK"], **extra}).encode(), 422),
        ("empty list", json.dumps({"texts": [], "tasks": [any_task]}).encode(), 422),
        ("empty string", json.dumps({"texts": ["a", ""], "tasks": [any_task], **extra}).encode(), 422),
        ("too many texts", json.dumps({"texts": ["a"] * (MAX_TEXTS + 1), "tasks": [any_task]}).encode(), 413),
        ("too many characters", json.dumps({"texts": ["a" * (MAX_CHARS + 1)], "tasks": [any_task]}).encode(), 413),
        ("wrong type", json.dumps({"texts": "a string"}).encode(), 422),
        ("a number for a text", json.dumps({"texts": [1, 2]}).encode(), 422),
    ]
    if pair is not None:
        bad.append(("pair missing", json.dumps({"texts": ["a", "b"], "tasks": [pair]}).encode(), 422))
        bad.append(("a pair short", json.dumps({"texts": ["a", "b"], "pairs": ["c"], "tasks": [pair]}).encode(), 422))
    return bad


def reference_answers(model, pool: list[dict]) -> list[list[dict]]:
    """What plain `model.predict(task, texts, pairs)` gives for each request, as {task: {"label",
    "probabilities"} | {"score"}} per text: one call per task on every distinct text (or text, pair)
    of the pool that asks for it, with predict's own defaults (each task cut at its trained length),
    nothing of the server's (no grouping, no length choice), so a wrong length or grouping in the
    server shows up as a wrong answer. Results do not depend on the batch (within TOLERANCE)."""
    import numpy as np

    from mtkd.serve import is_pair_task
    from mtkd.tasks import HeadKind

    def inputs(req, paired):
        return list(zip(req["texts"], req["pairs"], strict=True)) if paired else [(x, None) for x in req["texts"]]

    outputs = {}  # task -> ({input: index}, predictions)
    for t in dict.fromkeys(t for req in pool for t in req["tasks"]):
        paired = is_pair_task(model.tasks[t])
        index: dict[tuple, int] = {}
        for req in pool:
            if t in req["tasks"]:
                for item in inputs(req, paired):
                    index.setdefault(item, len(index))
        items = list(index)
        classify = model.tasks[t].head == HeadKind.CLASSIFICATION
        outputs[t] = (
            index,
            model.predict(t, [a for a, _ in items], [b for _, b in items] if paired else None, return_probs=classify),
        )
    answers = []
    for req in pool:
        rows = [{} for _ in req["texts"]]
        for t in req["tasks"]:
            spec, (index, out) = model.tasks[t], outputs[t]
            for r, item in enumerate(inputs(req, is_pair_task(spec))):
                v = out[index[item]]
                if spec.head == HeadKind.CLASSIFICATION:
                    p = np.asarray(v, dtype=np.float64)
                    rows[r][t] = {
                        "label": spec.labels[int(p.argmax())],
                        "probabilities": dict(zip(spec.labels, p.tolist(), strict=True)),
                    }
                else:
                    rows[r][t] = {"score": float(v)}
        answers.append(rows)
    return answers


def check_answer(got: dict, want: list[dict], req: dict) -> str | None:
    """None when the server's answer matches the reference; else what differs."""
    results = got.get("results")
    if (
        got.get("tasks") != list(dict.fromkeys(req["tasks"]))
        or not isinstance(results, list)
        or len(results) != len(want)
    ):
        return f"shape: tasks {got.get('tasks')} vs {req['tasks']}, {len(results or [])} vs {len(want)} results"
    for r, (g, w) in enumerate(zip(results, want, strict=True)):
        for t, wv in w.items():
            gv = g.get(t) or {}
            if "label" in wv:
                if gv.get("label") != wv["label"]:
                    # a near tie may flip between batch compositions: accept it within the tolerance
                    p = wv["probabilities"]
                    if abs(p.get(gv.get("label"), -1) - p[wv["label"]]) > TOLERANCE:
                        return f"text {r} task {t}: label {gv.get('label')!r} vs {wv['label']!r}"
                if req.get("probabilities"):
                    for lab, x in wv["probabilities"].items():
                        if abs(gv.get("probabilities", {}).get(lab, float("inf")) - x) > TOLERANCE:
                            return f"text {r} task {t}: probability of {lab}"
                elif "probabilities" in gv:
                    return f"text {r} task {t}: probabilities not asked for"
            elif abs(gv.get("score", float("inf")) - wv["score"]) > TOLERANCE:
                return f"text {r} task {t}: score {gv.get('score')} vs {wv['score']}"
    return None


# -------------------------------------------------------------------------------- the server
def rss_mb(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        pass
    except Exception:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


class Server:
    """`mtkd serve MODEL --port 0` in a subprocess; its URL from the first line it prints."""

    def __init__(self, model_dir: Path, max_batch: int, max_wait_ms: float, threads: int):
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        if threads:
            env["OMP_NUM_THREADS"] = str(threads)
        cmd = [
            sys.executable,
            "-m",
            "mtkd.cli",
            "serve",
            str(model_dir),
            "--port",
            "0",
            "--max-texts",
            str(MAX_TEXTS),
            "--max-chars",
            str(MAX_CHARS),
            "--max-batch",
            str(max_batch),
            "--max-wait-ms",
            str(max_wait_ms),
        ]
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, text=True, env=env)
        line = self._first_line(timeout=300)
        m = re.search(r"on (http://[^ ]+:\d+)", line or "")
        if not m:
            self.stop()
            self.log.seek(0)
            raise RuntimeError(f"mtkd serve did not start: {line!r}\n{self.log.read()[-3000:]}")
        self.url, self.pid = m.group(1), self.proc.pid

    def _first_line(self, timeout: float) -> str | None:
        box = []
        t = threading.Thread(target=lambda: box.append(self.proc.stdout.readline()), daemon=True)
        t.start()
        t.join(timeout)
        return box[0] if box else None

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def stderr_tail(self) -> str:
        self.log.seek(0)
        return self.log.read()[-3000:]


# ---------------------------------------------------------------------------------- the load
def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    s = sorted(values)
    return s[min(len(s) - 1, max(0, int(round(q * (len(s) - 1)))))]


class LevelTally:
    """What one concurrency level saw: counts, latencies, and up to a few examples of each failure."""

    def __init__(self):
        self.lat_good: list[float] = []
        self.lat_bad: list[float] = []
        self.counts = {"good": 0, "bad": 0, "5xx": 0, "wrong_answers": 0, "wrong_status": 0, "transport_errors": 0}
        self.examples: dict[str, list[str]] = {
            "wrong_answers": [],
            "wrong_status": [],
            "5xx": [],
            "transport_errors": [],
        }
        self.texts = 0

    def fail(self, kind: str, example: str) -> None:
        self.counts[kind] += 1
        self.examples[kind].append(example)

    def transport_error(self, e: Exception) -> None:
        self.fail("transport_errors", f"{type(e).__name__}: {e}"[:200])

    def bad(self, r, dt: float, name: str, status: int) -> None:
        """A bad input's answer: it must be its expected 4xx with an error message."""
        self.counts["bad"] += 1
        self.lat_bad.append(dt)
        if r.status_code != status or "error" not in r.json():
            self.fail("wrong_status", f"{name}: {r.status_code} {r.text[:160]}")

    def good(self, r, dt: float, req: dict, want: list[dict]) -> None:
        """A good request's answer: it must equal the reference."""
        self.counts["good"] += 1
        self.lat_good.append(dt)
        self.texts += len(req["texts"])
        problem = check_answer(r.json(), want, req) if r.status_code == 200 else f"status {r.status_code}"
        if problem:
            self.fail("wrong_answers", problem)

    def result(self, clients: int, wall: float, health0: dict, health1: dict, rss: list[float]) -> dict:
        counts, lat_good, lat_bad = self.counts, self.lat_good, self.lat_bad
        batches = health1["batches"] - health0["batches"]
        total = counts["good"] + counts["bad"]
        return {
            "clients": clients,
            "seconds": round(wall, 3),
            **counts,
            "requests_per_s": total / wall,
            "good_requests_per_s": counts["good"] / wall,
            "texts_per_s": self.texts / wall,
            "latency_ms": {
                "p50": _ms(_pct(lat_good, 0.5)),
                "p99": _ms(_pct(lat_good, 0.99)),
                "mean": _ms(statistics.fmean(lat_good)) if lat_good else None,
                "max": _ms(max(lat_good, default=None)),
            },
            "bad_latency_ms": {"p50": _ms(_pct(lat_bad, 0.5)), "p99": _ms(_pct(lat_bad, 0.99))},
            "server_batches": batches,
            "mean_batch_texts": (health1["texts"] - health0["texts"]) / batches if batches else None,
            "mean_batch_requests": (health1["requests"] - health0["requests"]) / batches if batches else None,
            "server_rejected": health1["rejected"] - health0["rejected"],
            "server_failed": health1["failed"] - health0["failed"],
            "rss_mb": {
                "start": rss[0] if rss else None,
                "end": rss[-1] if rss else None,
                "min": min(rss, default=None),
                "max": max(rss, default=None),
                "samples": rss,
            },
            "examples": {k: v[:5] for k, v in self.examples.items() if v},
        }


async def run_level(
    url: str, pid: int, pool, answers, bad, clients: int, seconds: float, bad_every: int, offset: int
) -> dict:
    """`clients` clients for `seconds`, each sending its next request when the last is answered;
    request i is bad when i % bad_every == bad_every - 1. The server's RSS sampled every 0.5 s."""
    import httpx

    tally = LevelTally()
    rss = []
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        health0 = (await client.get("/health")).json()
        t_start = time.perf_counter()
        stop = t_start + seconds

        async def sample_rss():
            while time.perf_counter() < stop:
                v = rss_mb(pid)
                if v is not None:
                    rss.append(round(v, 1))
                await asyncio.sleep(0.5)

        async def worker(w: int):
            i = offset + w
            while time.perf_counter() < stop:
                is_bad = bad_every > 0 and i % bad_every == bad_every - 1
                if is_bad:
                    name, body, status = bad[(i // bad_every) % len(bad)]
                else:
                    k = i % len(pool)
                    body, status = json.dumps(pool[k]).encode(), 200
                t0 = time.perf_counter()
                try:
                    r = await client.post("/predict", content=body, headers={"content-type": "application/json"})
                except httpx.HTTPError as e:
                    tally.transport_error(e)
                    i += clients
                    continue
                dt = time.perf_counter() - t0
                if r.status_code >= 500:
                    tally.fail("5xx", r.text[:200])
                if is_bad:
                    tally.bad(r, dt, name, status)
                else:
                    tally.good(r, dt, pool[k], answers[k])
                i += clients

        await asyncio.gather(sample_rss(), *(worker(w) for w in range(clients)))
        wall = time.perf_counter() - t_start
        health1 = (await client.get("/health")).json()
    return tally.result(clients, wall, health0, health1, rss)


def _ms(x):
    return None if x is None else round(1000 * x, 2)


async def warm_up(url: str, pool, n: int) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        for req in pool[:n]:
            r = await client.post("/predict", json=req)
            r.raise_for_status()


# -------------------------------------------------------------------------------------- main
def tiny_model(folder: Path) -> Path:
    """A tiny random MT-DNN (2 layers, hidden 64, the bundled tokenizer) with SST-2, MRPC, STS-B, RTE,
    saved with trained lengths as an mtkd run saves them (SST-2 16, RTE 48, the others none: 512,
    capped at the encoder's 128 positions), so the server cuts texts at several lengths."""

    import torch

    from mtkd.model import MTModel
    from mtkd.tasks import glue_tasks
    from mtkd.testing import save_tiny_encoder

    enc = save_tiny_encoder(folder / "encoder", max_positions=128)
    torch.manual_seed(0)
    g = glue_tasks()
    tasks = {t: g[t] for t in ("SST-2", "MRPC", "STS-B", "RTE")}
    tasks.update(
        {
            "SST-2": g["SST-2"].model_copy(update={"max_seq_len": 16}),
            "RTE": g["RTE"].model_copy(update={"max_seq_len": 48}),
        }
    )
    MTModel.from_encoder(str(enc), tasks).save_pretrained(folder / "model")
    return folder / "model"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="mtkd benchmark: the HTTP server under load")
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help=f"model folder or ONNX export (default {DEFAULT_MODEL.relative_to(REPO)})",
    )
    p.add_argument("--quick", action="store_true", help="tiny random model, 2 s per level, 1/4 clients (smoke test)")
    p.add_argument(
        "--seconds", type=float, default=None, help="duration of each concurrency level (default 60; quick 2)"
    )
    p.add_argument("--clients", default=None, help="concurrency levels, comma-separated (default 1,8,32; quick 1,4)")
    p.add_argument("--requests", type=int, default=None, help="distinct requests in the pool (default 400; quick 40)")
    p.add_argument("--bad-every", type=int, default=10, help="every Nth request is a bad input (0: none)")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--max-wait-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=0, help="the server's OMP_NUM_THREADS (default: torch's default)")
    p.add_argument("--data-root", type=Path, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=None, help=f"output folder (default {DEFAULT_OUT.relative_to(REPO)})")
    return p.parse_args(argv)


def choose_model(args, work: Path) -> tuple[Path, str]:
    """(model folder, label): --model, a tiny random one with --quick, else the demo's."""
    if args.model is not None:
        return args.model, str(args.model)
    if args.quick:
        return tiny_model(work), "tiny random MT-DNN (2 layers, hidden 64; SST-2, MRPC, STS-B, RTE)"
    return DEFAULT_MODEL, str(DEFAULT_MODEL.relative_to(REPO))


def serve_levels(model_dir: Path, args, pool, answers, bad, levels: list[int], seconds: float) -> dict:
    """Start the server, warm it up, run every level; the levels' records and the server's end state."""
    server = Server(model_dir, args.max_batch, args.max_wait_ms, args.threads)
    try:
        asyncio.run(warm_up(server.url, pool, min(len(pool), 20)))
        rss_start = rss_mb(server.pid)
        results = []
        for c in levels:
            res = asyncio.run(
                run_level(
                    server.url,
                    server.pid,
                    pool,
                    answers,
                    bad,
                    c,
                    seconds,
                    args.bad_every,
                    offset=sum(r["good"] + r["bad"] for r in results),
                )
            )
            results.append(res)
            print(
                f"  {c:>3} clients: {res['requests_per_s']:.1f} req/s, p50 {res['latency_ms']['p50']} ms, "
                f"p99 {res['latency_ms']['p99']} ms, 5xx {res['5xx']}, wrong {res['wrong_answers']}, "
                f"batch {res['mean_batch_texts'] or 0:.1f} texts, RSS {res['rss_mb']['end']} MB",
                flush=True,
            )
        rss_end = rss_mb(server.pid)
        alive = server.proc.poll() is None
    finally:
        code = server.stop()
        tail = server.stderr_tail()
    return {"results": results, "rss_start": rss_start, "rss_end": rss_end, "alive": alive, "code": code, "tail": tail}


def summary_of(served: dict) -> dict:
    results, rss_start, rss_end = served["results"], served["rss_start"], served["rss_end"]
    return {
        "requests": sum(r["good"] + r["bad"] for r in results),
        "5xx": sum(r["5xx"] for r in results),
        "wrong_answers": sum(r["wrong_answers"] for r in results),
        "wrong_status": sum(r["wrong_status"] for r in results),
        "transport_errors": sum(r["transport_errors"] for r in results),
        "rss_mb_start": rss_start,
        "rss_mb_end": rss_end,
        "rss_growth_mb": (rss_end - rss_start) if rss_start and rss_end else None,
        # the samples of every level: transient activations of big batches come and go; a leak climbs level by level
        "rss_mb_max": max((x for r in results for x in r["rss_mb"]["samples"]), default=None),
        "rss_mb_median_per_level": [
            statistics.median(r["rss_mb"]["samples"]) if r["rss_mb"]["samples"] else None for r in results
        ],
        "server_alive_at_end": served["alive"],
        "server_exit_code": served["code"],
    }


def level_table(results: list[dict]) -> str:
    rows = [
        [
            r["clients"],
            r["seconds"],
            r["good"],
            r["bad"],
            r["requests_per_s"],
            r["texts_per_s"],
            r["latency_ms"]["p50"],
            r["latency_ms"]["p99"],
            r["5xx"],
            r["wrong_answers"],
            r["wrong_status"],
            r["mean_batch_texts"],
            r["rss_mb"]["start"],
            r["rss_mb"]["end"],
        ]
        for r in results
    ]
    return md_table(
        [
            "clients",
            "s",
            "good",
            "bad",
            "req/s",
            "texts/s",
            "p50 ms",
            "p99 ms",
            "5xx",
            "wrong",
            "wrong status",
            "texts/batch",
            "RSS start MB",
            "RSS end MB",
        ],
        rows,
    )


def main(argv=None) -> int:
    args = parse_args(argv)
    seconds = args.seconds or (2.0 if args.quick else 60.0)
    levels = [int(c) for c in (args.clients or ("1,4" if args.quick else "1,8,32")).split(",")]
    n_requests = args.requests or (40 if args.quick else 400)
    work = Path(tempfile.mkdtemp(prefix="mtkd-bench-serve-"))
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        model_dir, label = choose_model(args, work)
        if not (model_dir / "config.json").is_file() and not (model_dir / "mtkd_export.json").is_file():
            print(f"no model at {model_dir}: train it first (make demo) or pass --model", file=sys.stderr)
            return 2
        from mtkd.serve import load_for_serving

        model, backend = load_for_serving(model_dir)
        singles, pairs = dev_texts(args.data_root or default_data_root(), 2000, args.seed)
        pool = request_pool(model, singles, pairs, n_requests, args.seed)
        bad = bad_inputs(model)
        t0 = time.perf_counter()
        answers = reference_answers(model, pool)
        ref_s = time.perf_counter() - t0
        del model
        print(
            f"mtkd serve benchmark: {label} ({backend}), {len(pool)} requests in the pool "
            f"({sum(len(r['texts']) for r in pool)} texts; reference answers in {ref_s:.1f} s), "
            f"levels {levels} x {seconds:g} s, every {args.bad_every}th request bad",
            flush=True,
        )
        served = serve_levels(model_dir, args, pool, answers, bad, levels, seconds)
        results, summary = served["results"], summary_of(served)
        ok = (
            summary["5xx"] == 0
            and summary["wrong_answers"] == 0
            and summary["wrong_status"] == 0
            and summary["transport_errors"] == 0
            and served["alive"]
        )
        table = level_table(results)
        doc = {
            "benchmark": NAME,
            "mode": "quick" if args.quick else "full",
            "machine": machine_info(),
            "model": label,
            "backend": backend,
            "settings": {
                "seconds": seconds,
                "clients": levels,
                "pool_requests": len(pool),
                "pool_texts": sum(len(r["texts"]) for r in pool),
                "bad_every": args.bad_every,
                "bad_inputs": [n for n, _, _ in bad],
                "max_batch": args.max_batch,
                "max_wait_ms": args.max_wait_ms,
                "max_texts": MAX_TEXTS,
                "max_chars": MAX_CHARS,
                "server_threads": args.threads or "default",
                "tolerance": TOLERANCE,
                "reference_seconds": ref_s,
                "client": "one asyncio process (httpx.AsyncClient) on the same machine",
            },
            "levels": results,
            "summary": summary,
            "ok": ok,
            "tables": [table],
        }
        path = write_json(args.out or DEFAULT_OUT, NAME, doc)
        rss_start, rss_end = summary["rss_mb_start"], summary["rss_mb_end"]
        print(
            f"\n{table}\n\n5xx: {summary['5xx']}, wrong answers: {summary['wrong_answers']}, wrong statuses: "
            f"{summary['wrong_status']}, server RSS {rss_start and round(rss_start)} -> "
            f"{rss_end and round(rss_end)} MB "
            f"(max {summary['rss_mb_max'] and round(summary['rss_mb_max'])}, median per level "
            f"{[m and round(m) for m in summary['rss_mb_median_per_level']]})"
            f"\nwrote {path}"
        )
        if not ok:
            print(
                "FAILED: "
                + json.dumps({k: v for r in results for k, v in r["examples"].items()})[:2000]
                + f"\nserver stderr:\n{served['tail']}",
                file=sys.stderr,
            )
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
