"""Efficiency: achieved FLOP/s of mtkd's training step against the CPU's fp32 matmul peak, and the
peak resident memory of MTL training on configs/glue-cpu.yaml's data path.

FLOPs: `torch.utils.flop_counter.FlopCounterMode` counts the matmul FLOPs (mm/addmm/bmm: linear
layers and attention) of one forward + backward of the MTModel in training mode. A step on a batch
of B examples padded to width L costs exactly B * (c + a*L + b*L^2); c, a, b are fitted from counts at
three small shapes and checked at a fourth. The FLOPs of the timed steps (their real shapes, padding
included: what the CPU executes) divided by their time (first forward -> last optimizer step, the loop's
bookkeeping and the optimizer included) is the achieved FLOP/s. The analytic BERT estimate
(6 * non-embedding params * tokens + 12 * layers * hidden * L^2 * B) is reported beside it.

Two workloads: the MTL mix of configs/glue-cpu.yaml (real GLUE lengths, mean ~40 tokens: small,
less efficient matmuls), and the reference shape, batch 32 x 128 tokens (synthetic SST-2
examples of exactly 128 tokens through the same unmodified training loop).

Peak: a square fp32 `torch.mm` (2048 x 2048 in --quick/--full), the median of repeats, measured in the
same rounds as the training runs (interleaved). Fraction = achieved / peak, paired per round.

Peak RSS: a fresh subprocess builds the run context from configs/glue-cpu.yaml (all nine tasks
tokenised and memory-mapped, capped train sets), a fresh model, and runs `mtkd.loop.train` for a few
hundred MTL steps with the config's checkpointing; its VmHWM at the end is the peak (not ru_maxrss,
which a subprocess inherits from its parent: see machine.peak_rss_mb).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from machine import peak_rss_mb, rss_now_mb
from mtkd_contender import run_mtkd
from reporting import md_table, median_range, ratio_table
from suite import BATCH, CONFIG, bench_document, quiet_hf, standalone
from timing import interleave, paired_ratio, stats, summarize
from train_subsets import fixed_train_sets

NAME = "efficiency"
KEYS_TRAIN = ["flop_per_s", "examples_per_s", "tokens_per_s", "seconds", "flops", "steps", "padding_fraction"]


# ---------------------------------------------------------------------------------------- FLOPs
def count_step_flops(model, task: str, batch: int, width: int) -> int:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    g = torch.Generator().manual_seed(width)
    ids = torch.randint(1000, 2000, (batch, width), generator=g)
    mask = torch.ones_like(ids)
    with FlopCounterMode(display=False) as fc:
        model(ids, mask, torch.zeros_like(ids), task=task).float().sum().backward()
    model.zero_grad(set_to_none=True)
    return int(fc.get_total_flops())


def fit_flop_model(model, task: str) -> dict:
    """Per-example FLOPs of a training step = c + a*L + b*L^2, fitted exactly at L = 8, 16, 32 and
    checked at (B=3, L=24)."""
    ls = np.array([8.0, 16.0, 32.0])
    per_ex = np.array([count_step_flops(model, task, 2, int(L)) / 2 for L in ls])
    c, a, b = np.linalg.solve(np.stack([np.ones(3), ls, ls ** 2], 1), per_ex)
    check = count_step_flops(model, task, 3, 24)
    pred = 3 * (c + a * 24 + b * 24 ** 2)
    enc = model.encoder.config
    nonemb = sum(p.numel() for n, p in model.encoder.named_parameters() if "embeddings" not in n)
    return {"c": float(c), "a": float(a), "b": float(b), "check_counted": check, "check_predicted": float(pred),
            "check_rel_error": abs(pred - check) / check, "nonembedding_params": nonemb,
            "layers": enc.num_hidden_layers, "hidden": enc.hidden_size,
            "counter_flops_per_token_L128": float(c / 128 + a + b * 128),
            "analytic_flops_per_token_L128": float(6 * nonemb + 12 * enc.num_hidden_layers * enc.hidden_size * 128)}


def step_flops(flop_model: dict, shapes) -> float:
    return float(sum(bsz * (flop_model["c"] + flop_model["a"] * w + flop_model["b"] * w * w) for bsz, w, _ in shapes))


def analytic_flops(flop_model: dict, shapes) -> float:
    params, layers, hidden = flop_model["nonembedding_params"], flop_model["layers"], flop_model["hidden"]
    return float(sum(6 * params * bsz * w + 12 * layers * hidden * w * w * bsz for bsz, w, _ in shapes))


def full_width_sets(env, n_batches: int, seed: int, width: int = 128) -> dict:
    """One task's TrainSet of n_batches * BATCH synthetic examples of exactly `width` tokens
    (random word pieces, random labels): every step runs at batch BATCH x width."""
    from mtkd.data import EncodedSplit
    from mtkd.loop import TrainSet

    task = "SST-2" if "SST-2" in env.data.specs else env.data.train_tasks()[0]
    n = n_batches * BATCH
    rng = np.random.default_rng(seed)
    ids = rng.integers(1000, 2000, size=n * width).astype(np.int32)
    ids[::width] = 101  # [CLS]
    data = EncodedSplit(task, "synthetic", [f"s{i}" for i in range(n)], ids, np.zeros(n * width, dtype=np.int8),
                        np.arange(n + 1, dtype=np.int64) * width, rng.integers(0, 2, size=n).astype(np.int64),
                        {"data_fingerprint": "synthetic", "max_len": width})
    return {task: TrainSet(data, np.arange(n, dtype=np.int64))}


# ------------------------------------------------------------------------------------- matmul peak
def matmul_peak(n: int, reps: int) -> dict:
    import torch

    g = torch.Generator().manual_seed(n)
    a, b = torch.randn(n, n, generator=g), torch.randn(n, n, generator=g)
    c = torch.empty(n, n)
    torch.mm(a, b, out=c)  # first call: allocation, kernel selection
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        torch.mm(a, b, out=c)
        times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    return {"n": n, "reps": reps, "seconds_median": med, "seconds_min": min(times), "flop_per_s": 2 * n ** 3 / med,
            "flop_per_s_best": 2 * n ** 3 / min(times)}


# ----------------------------------------------------------------------------------------- RSS
def rss_child(args) -> None:
    """Runs in a fresh process: MTL training on the config's data path; prints one JSON line."""
    import tempfile

    quiet_hf()
    import torch

    from mtkd.config import load_config
    from mtkd.loop import make_accelerator, train
    from mtkd.model import new_model
    from mtkd.task_data import TaskData

    if args.threads:
        torch.set_num_threads(args.threads)
    marks = {"after_imports": rss_now_mb()}
    work = Path(tempfile.mkdtemp(prefix="mtkd-rss-"))
    run_cfg = load_config(CONFIG, json.loads(args.overrides))
    data, accelerator = TaskData(run_cfg), make_accelerator()
    train_sets = {t: data.train_set(t) for t in data.train_tasks()}
    marks["after_data"] = rss_now_mb()
    # the peak so far: tokenising (on a cold cache) can exceed training's peak; reported apart
    peak_data = peak_rss_mb()
    model = new_model(run_cfg.encoder, data.specs, accelerator.device)
    marks["after_model"] = rss_now_mb()
    cfg = run_cfg.mtl.model_copy(update={"max_steps": args.steps})  # the config's checkpointing kept
    run_dir = work / "run"
    run_dir.mkdir()
    t0 = time.time()
    summary = train(model, train_sets, cfg, 0, run_dir, accelerator, desc="rss")
    marks["after_train"] = rss_now_mb()
    peak = peak_rss_mb()
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"peak_rss_mb": peak, "peak_rss_data_mb": peak_data, "rss_marks_mb": marks, "steps": summary["steps"],
                      "examples": summary["examples"], "seconds": time.time() - t0,
                      "train_examples": {t: len(s.indices) for t, s in train_sets.items()},
                      "checkpoint_every": cfg.checkpoint_every}))


def measure_rss(env) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--rss-child", "--steps", str(env.mode.rss_steps),
           "--overrides", json.dumps(env.overrides), "--threads", str(env.threads)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    if proc.returncode != 0:
        raise RuntimeError(f"peak-RSS subprocess failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res["wall_s"] = time.perf_counter() - t0
    print(f"  [{NAME}] peak RSS of {res['steps']} MTL steps: {res['peak_rss_mb']:.0f} MB ({res['wall_s']:.1f} s)",
          file=sys.stderr, flush=True)
    return res


# ------------------------------------------------------------------------------------------ run
def _gflops(s: dict) -> dict:
    return {k: s[k] / 1e9 for k in ("median", "min", "max")}


def flops_table(mode, summaries: dict) -> str:
    mm_s, mtl_s, wide_s = summaries["matmul_peak"], summaries["mtkd_mtl_train_step"], summaries["mtkd_train_step_32x128"]
    rows = [["fp32 matmul peak", f"{mode.matmul_n}x{mode.matmul_n} mm, median of {mode.matmul_reps}",
             median_range(_gflops(mm_s["flop_per_s"]))],
            ["mtkd MTL training step", f"{mode.flops_steps} steps, FlopCounterMode FLOPs", median_range(_gflops(mtl_s["flop_per_s"]))],
            ["  (analytic FLOPs)", "6*P*tokens + attention", median_range(_gflops(mtl_s["flop_per_s_analytic"]))],
            ["mtkd training step, batch 32 x 128", f"{mode.flops_steps} steps, synthetic full-width SST-2",
             median_range(_gflops(wide_s["flop_per_s"]))]]
    return md_table(["what", "how", "GFLOP/s median (min-max)"], rows)


def timed_rounds(env, flop_model: dict) -> dict[str, list[dict]]:
    """The matmul peak and both training workloads, interleaved."""
    mode = env.mode
    tasks = env.data.train_tasks()
    mtl_cache: dict = {}
    wide_cache: dict = {}

    def mtl_sets(r):
        if r not in mtl_cache:
            mtl_cache[r] = fixed_train_sets(env, tasks, mode.warmup_steps if r < 0 else mode.flops_steps, seed=5000 + r)
        return mtl_cache[r]

    def wide_sets(r):
        if r not in wide_cache:
            wide_cache[r] = full_width_sets(env, mode.warmup_steps if r < 0 else mode.flops_steps, seed=6000 + r)
        return wide_cache[r]

    def timed_flops(train_sets, seed):
        res = run_mtkd(env, train_sets, seed)
        shapes = [tuple(s) for s in res.pop("shapes")]
        res["flops"] = step_flops(flop_model, shapes)
        res["flops_analytic"] = analytic_flops(flop_model, shapes)
        res["flop_per_s"] = res["flops"] / res["seconds"]
        res["flop_per_s_analytic"] = res["flops_analytic"] / res["seconds"]
        return res

    return interleave([("matmul_peak", lambda r: matmul_peak(mode.matmul_n, mode.matmul_reps)),
                       ("mtkd_mtl_train_step", lambda r: timed_flops(mtl_sets(r), 5000 + r)),
                       ("mtkd_train_step_32x128", lambda r: timed_flops(wide_sets(r), 6000 + r))],
                      mode.repeats, warmup=mode.warmup_round, label=NAME)


def run(env) -> dict:
    mode = env.mode
    probe = env.new_model()
    flop_model = fit_flop_model(probe, "SST-2" if "SST-2" in env.data.specs else env.data.train_tasks()[0])
    del probe
    runs = timed_rounds(env, flop_model)
    rss = measure_rss(env)

    ratios = {"train_step_fraction_of_matmul_peak": paired_ratio(runs["mtkd_mtl_train_step"], runs["matmul_peak"], "flop_per_s"),
              "train_step_32x128_fraction_of_matmul_peak": paired_ratio(runs["mtkd_train_step_32x128"], runs["matmul_peak"],
                                                                         "flop_per_s")}
    summaries = {"matmul_peak": summarize(runs["matmul_peak"], ["flop_per_s", "flop_per_s_best", "seconds_median"]),
                 "mtkd_mtl_train_step": summarize(runs["mtkd_mtl_train_step"], KEYS_TRAIN + ["flop_per_s_analytic"]),
                 "mtkd_train_step_32x128": summarize(runs["mtkd_train_step_32x128"], KEYS_TRAIN + ["flop_per_s_analytic"])}
    t1 = flops_table(mode, summaries)
    what = {"train_step_fraction_of_matmul_peak": "achieved training FLOP/s / matmul peak (MTL mix, real lengths)",
            "train_step_32x128_fraction_of_matmul_peak": "achieved training FLOP/s / matmul peak (batch 32 x 128)",
            "peak_rss_mtl_mb": f"VmHWM, {rss['steps']} MTL steps, fresh process"}
    t2 = ratio_table({**ratios, "peak_rss_mtl_mb": stats([rss["peak_rss_mb"]])}, what)
    title = f"## Efficiency ({env.encoder_label}; {env.threads} threads; {mode.repeats} rounds interleaved)"
    print(f"\n{title}\n\n{t1}\n\n{t2}\n", flush=True)
    settings = {"flop_model": flop_model, "matmul_n": mode.matmul_n, "matmul_reps": mode.matmul_reps,
                "timed_steps": mode.flops_steps, "rss_steps": mode.rss_steps, "rounds": mode.repeats,
                "flops_note": "matmul FLOPs (mm/addmm/bmm) of forward+backward at the executed (padded) shapes"}
    return bench_document(env, NAME, settings, summaries, ratios, [title, t1, t2], what=what,
                          peak_rss_mtl_mb=rss["peak_rss_mb"], rss=rss)


if __name__ == "__main__":
    if "--rss-child" in sys.argv:
        p = argparse.ArgumentParser()
        p.add_argument("--rss-child", action="store_true")
        p.add_argument("--steps", type=int, required=True)
        p.add_argument("--overrides", required=True)
        p.add_argument("--threads", type=int, default=0)
        rss_child(p.parse_args())
    else:
        standalone(NAME, run)
