"""ONNX Runtime fp32 and int8 against PyTorch fp32, serving a trained multi-task model (`mtkd export`).

Contenders, each answering every task of the model from one encoder pass:
- `pytorch_fp32`: MTModel (eval, inference_mode, SDPA attention), as `MTModel.predict` runs it;
- `onnx_fp32`: `mtkd export MODEL` (ONNX Runtime's fused transformer graph), as `OnnxModel.predict` runs it;
- `onnx_int8`: `mtkd export MODEL --quantize int8` (dynamic quantization).

All three get the same inputs, tokenised beforehand (each text at its task's trained length): real
dev texts of every task of the model (single texts and pairs mixed, a seeded sample), so the timings
are of the models alone. Same threads for PyTorch and ONNX Runtime (`--threads`, default torch's).

1. Batch-1 latency: every text alone; p50 / p99 over all timed calls of the rounds (contenders
   interleaved A B C per round, one discarded warm-up round).
2. Batch-32 throughput: the texts sorted by length in batches of 32 (dynamic padding, as predict
   batches them), examples/s per pass; rounds interleaved, ratios are the median (min-max) of the
   per-round ratios against PyTorch.
3. Accuracy: each dev split's metrics from the three contenders (each split capped at the mode's
   dev cap, a seeded sample), and the int8 delta in points per task (the mean of its metrics, as
   the GLUE score averages them). Targets: int8 >= 2x PyTorch's batch-32 throughput
   with <= 0.5 points lost per task.

    python benchmarks/bench_onnx.py --model runs/demo/seed-42/mtl/model          # quick (default), ~6-8 min on 2 cores
    python benchmarks/bench_onnx.py --model runs/demo/seed-42/mtl/model --full   # more texts and rounds, full dev sets
    python benchmarks/bench_onnx.py --smoke --out /tmp/b                          # tiny random model, seconds (tests)

Prints the tables; writes <out>/onnx.json (default results/bench/onnx.json).
"""

from __future__ import annotations

import argparse
import gc
import shutil
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info, warn_if_busy  # noqa: E402
from reporting import md_table, median_range, write_json  # noqa: E402
from suite import DEFAULT_OUT, REPO, default_data_root, quiet_hf  # noqa: E402
from timing import stats, summarize  # noqa: E402

NAME = "onnx"
DEFAULT_MODEL = REPO / "runs" / "demo" / "seed-42" / "mtl" / "model"
CONTENDERS = ("pytorch_fp32", "onnx_fp32", "onnx_int8")
ONNX_CONTENDERS = ("onnx_fp32", "onnx_int8")
TARGETS = {"int8_throughput_b32_vs_pytorch": (">=", 2.0), "int8_max_points_lost_per_task": ("<=", 0.5)}


@dataclass(frozen=True)
class Mode:
    name: str
    latency_texts: int  # texts timed one by one, per round
    throughput_texts: int  # texts per batch-32 pass, per round
    rounds: int
    warmup: bool
    dev_cap: int | None  # dev examples per split for the accuracy comparison (None: all)


MODES = {
    "smoke": Mode("smoke", latency_texts=8, throughput_texts=64, rounds=1, warmup=False, dev_cap=16),
    "quick": Mode("quick", latency_texts=200, throughput_texts=1024, rounds=3, warmup=True, dev_cap=1000),
    "full": Mode("full", latency_texts=500, throughput_texts=2048, rounds=5, warmup=True, dev_cap=None),
}


@dataclass
class Contenders:
    """What every measurement needs: the model's tasks and tokenizer, the dev texts, and one
    `run_batch(heads, ids, mask, types)` per contender."""
    mode: Mode
    specs: dict
    tokenizer: object
    limit: int  # the encoder's positions
    pad_id: int
    heads: list[str]
    dev: dict
    runners: dict

    def pool(self, n: int, seed: int):
        return _pool(self.dev, self.tokenizer, self.specs, self.limit, n, seed)

    def rounds(self) -> list[int]:
        return ([-1] if self.mode.warmup else []) + list(range(self.mode.rounds))

    def tag(self, r: int) -> str:
        return "warm-up" if r < 0 else f"round {r + 1}/{self.mode.rounds}"


def _tiny_model(folder: Path) -> Path:
    """Smoke mode: a random-init tiny BERT (the bundled tokenizer) with the demo's four heads."""
    import torch

    from mtkd.model import MTModel
    from mtkd.tasks import glue_tasks
    from mtkd.testing import save_tiny_encoder

    enc = save_tiny_encoder(folder.parent / "tiny-encoder", max_positions=128)
    torch.manual_seed(0)
    specs = glue_tasks()
    MTModel.from_encoder(str(enc), {t: specs[t] for t in ("SST-2", "MRPC", "STS-B", "RTE")}).save_pretrained(folder)
    return folder


def _pool(dev: dict, tokenizer, specs, limit, n: int, seed: int):
    """n (token ids, token types) rows sampled from every dev split's texts, each cut at its task's
    trained length; returns rows, types and which split each came from."""
    from mtkd import inference

    rows, types, where = [], [], []
    for report, d in dev.items():
        cut = inference.train_max_len(specs[d["task"]])
        r, t, _ = inference.tokenize(tokenizer, d["texts"], d["pairs"], min(cut, limit or cut))
        rows += r
        types += t if t is not None else [[0] * len(x) for x in r]
        where += [report] * len(r)
    pick = np.random.default_rng(seed).permutation(len(rows))[:n] if n < len(rows) else \
        np.random.default_rng(seed).choice(len(rows), size=n, replace=True)
    return [rows[i] for i in pick], [types[i] for i in pick], [where[i] for i in pick]


def _percentile(values, q):
    return float(np.percentile(np.asarray(values), q)) if len(values) else None


# ------------------------------------------------------------------------------ setting up
def mode_of(args) -> Mode:
    """The mode asked for, with the --rounds / --latency-texts / --throughput-texts / --dev-cap given."""
    changes = {k: getattr(args, k) for k in ("rounds", "latency_texts", "throughput_texts", "dev_cap")
               if getattr(args, k, None)}
    return Mode(**{**asdict(MODES[args.mode]), **changes}) if changes else MODES[args.mode]


def model_folder(args, mode: Mode, work: Path) -> tuple[Path, str]:
    """(the model folder, its label): --model, a tiny random one in smoke mode, else the demo's."""
    if mode.name == "smoke" and not args.model:
        return _tiny_model(work / "model"), "tiny random BERT (2 layers, hidden 64), 4 heads"
    model_dir = Path(args.model or DEFAULT_MODEL)
    if not (model_dir / "config.json").is_file():
        raise SystemExit(f"bench_onnx: no model folder at {model_dir} (train one: make demo; or pass --model)")
    return model_dir, str(model_dir)


def export_both(args, model_dir: Path, work: Path, data_root: Path) -> dict:
    """`mtkd export` fp32 and int8 into work/onnx_fp32, work/onnx_int8; what each took and produced."""
    from mtkd.export import export_onnx

    exports = {}
    for name, q in (("onnx_fp32", None), ("onnx_int8", "int8")):
        t0 = time.perf_counter()
        meta = export_onnx(model_dir, work / name, quantize=q, data_root=data_root, compare=False,
                           optimize=not args.no_optimize, exporter=args.exporter,
                           echo=lambda line: print(f"  [export] {line}", file=sys.stderr, flush=True))
        exports[name] = {"seconds": time.perf_counter() - t0, "graph_mb": meta["graph"]["size"] / 2**20,
                         "fused": meta["fused"], "check": meta["check"], "exporter": meta["exporter"]}
    return exports


def load_contenders(mode: Mode, model_dir: Path, work: Path, data_root: Path, threads: int) -> Contenders:
    from mtkd import inference
    from mtkd.export import dev_sets
    from mtkd.onnx_model import OnnxModel
    from mtkd.encoders import max_positions
    from mtkd.model import MTModel

    model = MTModel.from_pretrained(model_dir).eval()
    specs, tok = model.tasks, model.tokenizer
    onnx_models = {n: OnnxModel.from_pretrained(work / n, threads=threads) for n in ONNX_CONTENDERS}
    runners = {"pytorch_fp32": model.run_batch, **{n: m.run_batch for n, m in onnx_models.items()}}
    heads = [t for t, s in specs.items() if s.head_of is None]
    dev = dev_sets(specs, data_root, mode.dev_cap)
    if not dev:
        raise SystemExit(f"bench_onnx: no labelled dev files of {', '.join(specs)} under {data_root} (--data-root)")
    return Contenders(mode, specs, tok, max_positions(model.encoder.config), inference.pad_token_id(tok), heads, dev, runners)


# ------------------------------------------------------------------------------ measuring
def time_latency(setup: Contenders) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """1. Every text alone: (contender -> every timed call's seconds, contender -> each round's median)."""
    from mtkd import inference

    lat: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    lat_rounds: dict[str, list[float]] = {name: [] for name in CONTENDERS}
    for r in setup.rounds():
        rows, types, _ = setup.pool(setup.mode.latency_texts if r >= 0 else 16, seed=100 + r)
        singles = [inference.pad_rows([rows[i]], [types[i]] if types is not None else None, setup.pad_id)
                   for i in range(len(rows))]
        for name in CONTENDERS:
            times = []
            for ids, mask, tt in singles:
                t0 = time.perf_counter()
                setup.runners[name](setup.heads, ids, mask, tt)
                times.append(time.perf_counter() - t0)
            if r >= 0:
                lat[name] += times
                lat_rounds[name].append(float(np.median(times)))
            print(f"  [latency] {setup.tag(r):>11} {name:<13} p50 {1e3 * np.median(times):.2f} ms", file=sys.stderr, flush=True)
            gc.collect()
    return lat, lat_rounds


def time_throughput(setup: Contenders) -> dict[str, list[dict]]:
    """2. The texts sorted by length in batches of 32: contender -> each round's record."""
    from mtkd import inference

    thr: dict[str, list[dict]] = {name: [] for name in CONTENDERS}
    for r in setup.rounds():
        rows, types, _ = setup.pool(setup.mode.throughput_texts if r >= 0 else 64, seed=200 + r)
        batches = [inference.pad_rows([rows[i] for i in sel], [types[i] for i in sel] if types is not None else None,
                                      setup.pad_id)
                   for sel in inference.length_batches([len(x) for x in rows], 32)]
        tokens = sum(len(x) for x in rows)
        for name in CONTENDERS:
            t0 = time.perf_counter()
            for ids, mask, tt in batches:
                setup.runners[name](setup.heads, ids, mask, tt)
            dt = time.perf_counter() - t0
            if r >= 0:
                thr[name].append({"examples": len(rows), "tokens": tokens, "seconds": dt,
                                  "examples_per_s": len(rows) / dt, "tokens_per_s": tokens / dt})
            print(f"  [batch-32] {setup.tag(r):>11} {name:<13} {len(rows) / dt:.1f} examples/s", file=sys.stderr, flush=True)
            gc.collect()
    return thr


def dev_accuracy(setup: Contenders) -> dict[str, dict]:
    """3. Every dev split's metrics from each contender."""
    from mtkd.export import Timed, dev_scores

    acc = {}
    for name in CONTENDERS:
        t0 = time.perf_counter()
        timed = Timed(setup.runners[name])
        acc[name] = dev_scores(setup.tokenizer, timed, setup.specs, setup.dev, setup.limit)
        print(f"  [dev] {name:<13} {time.perf_counter() - t0:.1f} s ({timed.examples_per_s:.1f} examples/s)",
              file=sys.stderr, flush=True)
    return acc


# ------------------------------------------------------------------------------ the document
def contender_records(lat, lat_rounds, thr, acc, task_score) -> dict:
    out = {}
    for name in CONTENDERS:
        out[name] = {
            "latency_b1_ms": {"p50": 1e3 * _percentile(lat[name], 50), "p99": 1e3 * _percentile(lat[name], 99),
                              "mean": 1e3 * float(np.mean(lat[name])), "calls": len(lat[name]),
                              "round_p50": [1e3 * v for v in lat_rounds[name]]},
            "throughput_b32": summarize(thr[name], ["examples_per_s", "tokens_per_s", "seconds", "examples", "tokens"]),
            "dev": acc[name], "task_scores": task_score[name],
        }
    return out


def ratios_of(lat_rounds, thr) -> dict:
    """Per-round ratios against PyTorch: batch-32 throughput, and batch-1 p50 speed-up."""
    ratios = {}
    for name in ONNX_CONTENDERS:
        key = name.replace("onnx_", "")
        ratios[f"{key}_throughput_b32_vs_pytorch"] = stats(
            a["examples_per_s"] / b["examples_per_s"] for a, b in zip(thr[name], thr["pytorch_fp32"]))
        ratios[f"{key}_latency_b1_p50_speedup_vs_pytorch"] = stats(
            b / a for a, b in zip(lat_rounds[name], lat_rounds["pytorch_fp32"]))
    return ratios


def tables(contenders: dict, exports: dict, ratios: dict, acc: dict, delta: dict, worst_loss: float, met: dict):
    """(speed, accuracy, targets) tables."""
    def vs_pytorch(name):
        return "1" if name == "pytorch_fp32" else median_range(ratios[f"{name.replace('onnx_', '')}_throughput_b32_vs_pytorch"])

    speed = md_table(
        ["contender", "batch-1 p50 ms", "batch-1 p99 ms", "batch-32 examples/s", "vs PyTorch (batch 32)", "graph MB"],
        [[name, contenders[name]["latency_b1_ms"]["p50"], contenders[name]["latency_b1_ms"]["p99"],
          median_range(contenders[name]["throughput_b32"]["examples_per_s"]), vs_pytorch(name),
          exports[name]["graph_mb"] if name in exports else None] for name in CONTENDERS])
    base = acc["pytorch_fp32"]
    accuracy = md_table(
        ["dev split", "metric", "PyTorch fp32", "ONNX fp32", "ONNX int8", "int8 - fp32"],
        [[rep, m, base[rep][m], acc["onnx_fp32"][rep][m], acc["onnx_int8"][rep][m],
          f"{acc['onnx_int8'][rep][m] - base[rep][m]:+.2f}"]
         for rep in base for m in base[rep]])
    lost = ", ".join(f"{t} {d['onnx_int8']:+.2f}" for t, d in delta.items())
    targets = md_table(
        ["target", "measured", "target", "met"],
        [["int8 batch-32 throughput / PyTorch", median_range(ratios["int8_throughput_b32_vs_pytorch"]), ">= 2.0",
          "yes" if met["int8_throughput_b32_vs_pytorch"] else "NO"],
         [f"int8 points lost, worst task ({lost})", f"{worst_loss:.2f}", "<= 0.5",
          "yes" if met["int8_max_points_lost_per_task"] else "NO"]])
    return speed, accuracy, targets


def run(args) -> dict:
    import torch

    from mtkd.metrics import task_scores

    quiet_hf()
    mode = mode_of(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    data_root = Path(args.data_root).expanduser().resolve() if args.data_root else default_data_root()
    work = Path(tempfile.mkdtemp(prefix="mtkd-bench-onnx-"))
    warn_if_busy(mode.name)
    try:
        model_dir, label = model_folder(args, mode, work)
        exports = export_both(args, model_dir, work, data_root)
        setup = load_contenders(mode, model_dir, work, data_root, threads)
        lat, lat_rounds = time_latency(setup)
        thr = time_throughput(setup)
        acc = dev_accuracy(setup)
        task_score = {name: task_scores(acc[name], setup.specs) for name in CONTENDERS}
        delta = {t: {name: task_score[name][t] - task_score["pytorch_fp32"][t] for name in ONNX_CONTENDERS}
                 for t in task_score["pytorch_fp32"]}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    contenders = contender_records(lat, lat_rounds, thr, acc, task_score)
    ratios = ratios_of(lat_rounds, thr)
    worst_loss = max(0.0, *(-d["onnx_int8"] for d in delta.values()))
    met = {"int8_throughput_b32_vs_pytorch": ratios["int8_throughput_b32_vs_pytorch"]["median"] >= 2.0,
           "int8_max_points_lost_per_task": worst_loss <= 0.5}
    t1, t2, t3 = tables(contenders, exports, ratios, acc, delta, worst_loss, met)
    title = (f"## ONNX Runtime vs PyTorch ({label}; {threads} threads; {mode.latency_texts} texts one by one, "
             f"{mode.throughput_texts} in batches of 32, {mode.rounds} rounds interleaved; dev cap {mode.dev_cap})")
    print(f"\n{title}\n\n{t1}\n\n{t2}\n\n{t3}\n", flush=True)
    return {
        "benchmark": NAME, "mode": mode.name, "machine": machine_info(), "model": label,
        "data_root": str(data_root),
        "settings": {"mode": asdict(mode), "threads": threads, "optimize": not args.no_optimize, "exporter": args.exporter,
                     "onnxruntime_intra_op_threads": threads, "heads_per_call": setup.heads,
                     "inputs": "tokenised beforehand; model time only",
                     "dev_splits": {r: {"examples": len(d["texts"]), "of": d["total"]} for r, d in setup.dev.items()}},
        "exports": exports, "contenders": contenders,
        "ratios": {k: v["median"] for k, v in ratios.items()}, "ratio_stats": ratios,
        "int8_delta_points_per_task": {t: d["onnx_int8"] for t, d in delta.items()},
        "onnx_fp32_delta_points_per_task": {t: d["onnx_fp32"] for t, d in delta.items()},
        "int8_max_points_lost_per_task": worst_loss,
        "targets": {k: list(v) for k, v in TARGETS.items()}, "met": met,
        "tables": [title, t1, t2, t3],
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="mtkd benchmark: ONNX Runtime fp32/int8 vs PyTorch fp32")
    g = p.add_mutually_exclusive_group()
    for m in MODES:
        g.add_argument(f"--{m}", dest="mode", action="store_const", const=m)
    p.set_defaults(mode="quick")
    p.add_argument("--model", help=f"trained model folder (default {DEFAULT_MODEL.relative_to(REPO)}; "
                                   "smoke: a tiny random one)")
    p.add_argument("--out", help="output folder (default results/bench)")
    p.add_argument("--threads", type=int, default=0, help="PyTorch and ONNX Runtime threads (default: torch's default)")
    p.add_argument("--data-root", help="GLUE folder (default $MTKD_DATA_ROOT or ../shared/data/glue)")
    p.add_argument("--rounds", type=int, help="timed rounds (overrides the mode's)")
    p.add_argument("--no-optimize", action="store_true", help="export without ONNX Runtime's transformer fusions")
    p.add_argument("--exporter", choices=["torchscript", "dynamo"], default="torchscript")
    p.add_argument("--latency-texts", type=int, help="texts timed one by one per round (overrides the mode's)")
    p.add_argument("--throughput-texts", type=int, help="texts per batch-32 pass per round (overrides the mode's)")
    p.add_argument("--dev-cap", type=int, help="dev examples per split for the accuracy comparison (overrides the mode's)")
    args = p.parse_args(argv)
    t0 = time.perf_counter()
    doc = run(args)
    doc["wall_s"] = time.perf_counter() - t0
    print(f"wrote {write_json(Path(args.out) if args.out else DEFAULT_OUT, NAME, doc)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
