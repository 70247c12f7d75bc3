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
   the GLUE score averages them). Targets (issue 15): int8 >= 2x PyTorch's batch-32 throughput
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

import common  # noqa: E402

NAME = "onnx"
DEFAULT_MODEL = common.REPO / "runs" / "demo" / "seed-42" / "mtl" / "model"
CONTENDERS = ("pytorch_fp32", "onnx_fp32", "onnx_int8")
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
        r, t = inference.tokenize(tokenizer, d["texts"], d["pairs"], min(cut, limit or cut))
        rows += r
        types += t if t is not None else [[0] * len(x) for x in r]
        where += [report] * len(r)
    pick = np.random.default_rng(seed).permutation(len(rows))[:n] if n < len(rows) else \
        np.random.default_rng(seed).choice(len(rows), size=n, replace=True)
    return [rows[i] for i in pick], [types[i] for i in pick], [where[i] for i in pick]


def _percentile(values, q):
    return float(np.percentile(np.asarray(values), q)) if len(values) else None


def run(args) -> dict:
    import torch

    from mtkd import inference
    from mtkd.export import OnnxModel, Timed, dev_scores, dev_sets, export_onnx, pytorch_run_batch
    from mtkd.metrics import task_scores
    from mtkd.model import MTModel, max_positions

    common.quiet_hf()
    mode = MODES[args.mode]
    changes = {k: getattr(args, k) for k in ("rounds", "latency_texts", "throughput_texts", "dev_cap")
               if getattr(args, k, None)}
    if changes:
        mode = Mode(**{**asdict(mode), **changes})
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    data_root = Path(args.data_root).expanduser().resolve() if args.data_root else common.default_data_root()
    work = Path(tempfile.mkdtemp(prefix="mtkd-bench-onnx-"))
    common.warn_if_busy(mode.name)
    try:
        if mode.name == "smoke" and not args.model:
            model_dir, label = _tiny_model(work / "model"), "tiny random BERT (2 layers, hidden 64), 4 heads"
        else:
            model_dir = Path(args.model or DEFAULT_MODEL)
            label = str(model_dir)
            if not (model_dir / "config.json").is_file():
                raise SystemExit(f"bench_onnx: no model folder at {model_dir} (train one: make demo; or pass --model)")

        # ------------------------------------------------------------------ the exports
        exports = {}
        for name, q in (("onnx_fp32", None), ("onnx_int8", "int8")):
            t0 = time.perf_counter()
            meta = export_onnx(model_dir, work / name, quantize=q, data_root=data_root, compare=False,
                               optimize=not args.no_optimize, exporter=args.exporter,
                               echo=lambda line: print(f"  [export] {line}", file=sys.stderr, flush=True))
            exports[name] = {"seconds": time.perf_counter() - t0, "graph_mb": meta["graph"]["size"] / 2**20,
                             "fused": meta["fused"], "check": meta["check"], "exporter": meta["exporter"]}
        model = MTModel.from_pretrained(model_dir).eval()
        specs, tok = model.tasks, model.tokenizer
        limit = max_positions(model.encoder.config)
        onnx_models = {n: OnnxModel.from_pretrained(work / n, threads=threads) for n in ("onnx_fp32", "onnx_int8")}
        runners = {"pytorch_fp32": pytorch_run_batch(model), **{n: m.run_batch for n, m in onnx_models.items()}}
        heads = [t for t, s in specs.items() if s.head_of is None]
        dev = dev_sets(specs, data_root, mode.dev_cap)
        if not dev:
            raise SystemExit(f"bench_onnx: no labelled dev files of {', '.join(specs)} under {data_root} (--data-root)")
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0

        # ------------------------------------------------------------------ 1. batch-1 latency
        lat: dict[str, list[float]] = {c: [] for c in CONTENDERS}
        lat_rounds: dict[str, list[float]] = {c: [] for c in CONTENDERS}
        rounds = ([-1] if mode.warmup else []) + list(range(mode.rounds))
        for r in rounds:
            rows, types, _ = _pool(dev, tok, specs, limit, mode.latency_texts if r >= 0 else 16, seed=100 + r)
            singles = [inference.pad_batch(rows, types, [i], pad_id) for i in range(len(rows))]
            for c in CONTENDERS:
                times = []
                for ids, mask, tt in singles:
                    t0 = time.perf_counter()
                    runners[c](heads, ids, mask, tt)
                    times.append(time.perf_counter() - t0)
                if r >= 0:
                    lat[c] += times
                    lat_rounds[c].append(float(np.median(times)))
                print(f"  [latency] {'warm-up' if r < 0 else f'round {r + 1}/{mode.rounds}':>11} {c:<13} "
                      f"p50 {1e3 * np.median(times):.2f} ms", file=sys.stderr, flush=True)
                gc.collect()

        # ------------------------------------------------------------------ 2. batch-32 throughput
        thr: dict[str, list[dict]] = {c: [] for c in CONTENDERS}
        for r in rounds:
            rows, types, _ = _pool(dev, tok, specs, limit, mode.throughput_texts if r >= 0 else 64, seed=200 + r)
            batches = [inference.pad_batch(rows, types, sel, pad_id)
                       for sel in inference.length_batches([len(x) for x in rows], 32)]
            tokens = sum(len(x) for x in rows)
            for c in CONTENDERS:
                t0 = time.perf_counter()
                for ids, mask, tt in batches:
                    runners[c](heads, ids, mask, tt)
                dt = time.perf_counter() - t0
                if r >= 0:
                    thr[c].append({"examples": len(rows), "tokens": tokens, "seconds": dt,
                                   "examples_per_s": len(rows) / dt, "tokens_per_s": tokens / dt})
                print(f"  [batch-32] {'warm-up' if r < 0 else f'round {r + 1}/{mode.rounds}':>11} {c:<13} "
                      f"{len(rows) / dt:.1f} examples/s", file=sys.stderr, flush=True)
                gc.collect()

        # ------------------------------------------------------------------ 3. accuracy
        acc = {}
        for c in CONTENDERS:
            t0 = time.perf_counter()
            timed = Timed(runners[c])
            acc[c] = dev_scores(tok, timed, specs, dev, limit)
            print(f"  [dev] {c:<13} {time.perf_counter() - t0:.1f} s ({timed.examples_per_s:.1f} examples/s)",
                  file=sys.stderr, flush=True)
        task_score = {c: task_scores(acc[c], specs) for c in CONTENDERS}
        delta = {t: {c: task_score[c][t] - task_score["pytorch_fp32"][t] for c in ("onnx_fp32", "onnx_int8")}
                 for t in task_score["pytorch_fp32"]}
    finally:
        shutil.rmtree(work, ignore_errors=True)

    # ---------------------------------------------------------------------- the document
    contenders = {}
    for c in CONTENDERS:
        contenders[c] = {
            "latency_b1_ms": {"p50": 1e3 * _percentile(lat[c], 50), "p99": 1e3 * _percentile(lat[c], 99),
                              "mean": 1e3 * float(np.mean(lat[c])), "calls": len(lat[c]),
                              "round_p50": [1e3 * v for v in lat_rounds[c]]},
            "throughput_b32": common.summarize(thr[c], ["examples_per_s", "tokens_per_s", "seconds", "examples", "tokens"]),
            "dev": acc[c], "task_scores": task_score[c],
        }
    ratios = {}
    for c in ("onnx_fp32", "onnx_int8"):
        key = c.replace("onnx_", "")
        ratios[f"{key}_throughput_b32_vs_pytorch"] = common.stats(
            a["examples_per_s"] / b["examples_per_s"] for a, b in zip(thr[c], thr["pytorch_fp32"]))
        ratios[f"{key}_latency_b1_p50_speedup_vs_pytorch"] = common.stats(
            b / a for a, b in zip(lat_rounds[c], lat_rounds["pytorch_fp32"]))
    worst_loss = max(0.0, *(-d["onnx_int8"] for d in delta.values()))
    met = {"int8_throughput_b32_vs_pytorch": ratios["int8_throughput_b32_vs_pytorch"]["median"] >= 2.0,
           "int8_max_points_lost_per_task": worst_loss <= 0.5}

    t1 = common.md_table(
        ["contender", "batch-1 p50 ms", "batch-1 p99 ms", "batch-32 examples/s", "vs PyTorch (batch 32)", "graph MB"],
        [[c, contenders[c]["latency_b1_ms"]["p50"], contenders[c]["latency_b1_ms"]["p99"],
          common.mmm(contenders[c]["throughput_b32"]["examples_per_s"]),
          "1" if c == "pytorch_fp32" else common.mmm(ratios[f"{c.replace('onnx_', '')}_throughput_b32_vs_pytorch"]),
          exports[c]["graph_mb"] if c in exports else None] for c in CONTENDERS])
    reports = list(acc["pytorch_fp32"])
    t2 = common.md_table(
        ["dev split", "metric", "PyTorch fp32", "ONNX fp32", "ONNX int8", "int8 - fp32"],
        [[rep, m, acc["pytorch_fp32"][rep][m], acc["onnx_fp32"][rep][m], acc["onnx_int8"][rep][m],
          f"{acc['onnx_int8'][rep][m] - acc['pytorch_fp32'][rep][m]:+.2f}"]
         for rep in reports for m in acc["pytorch_fp32"][rep]])
    t3 = common.md_table(
        ["target", "measured", "target", "met"],
        [["int8 batch-32 throughput / PyTorch", common.mmm(ratios["int8_throughput_b32_vs_pytorch"]), ">= 2.0",
          "yes" if met["int8_throughput_b32_vs_pytorch"] else "NO"],
         ["int8 points lost, worst task (" + ", ".join(f"{t} {d['onnx_int8']:+.2f}" for t, d in delta.items()) + ")",
          f"{worst_loss:.2f}", "<= 0.5", "yes" if met["int8_max_points_lost_per_task"] else "NO"]])
    title = (f"## ONNX Runtime vs PyTorch ({label}; {threads} threads; {mode.latency_texts} texts one by one, "
             f"{mode.throughput_texts} in batches of 32, {mode.rounds} rounds interleaved; dev cap {mode.dev_cap})")
    print(f"\n{title}\n\n{t1}\n\n{t2}\n\n{t3}\n", flush=True)
    return {
        "benchmark": NAME, "mode": mode.name, "machine": common.machine_info(), "model": label,
        "data_root": str(data_root),
        "settings": {"mode": asdict(mode), "threads": threads, "optimize": not args.no_optimize, "exporter": args.exporter, "onnxruntime_intra_op_threads": threads,
                     "heads_per_call": heads, "inputs": "tokenised beforehand; model time only",
                     "dev_splits": {r: {"examples": len(d["texts"]), "of": d["total"]} for r, d in dev.items()}},
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
    p.add_argument("--model", help=f"trained model folder (default {DEFAULT_MODEL.relative_to(common.REPO)}; "
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
    print(f"wrote {common.write_json(Path(args.out) if args.out else common.DEFAULT_OUT, NAME, doc)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
