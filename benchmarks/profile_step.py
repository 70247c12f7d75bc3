"""Where a training step's time goes, and what mtkd's CPU dropout (mtkd.dropout) saves: forward /
backward / grad clip / Adamax step of the default encoder at a fixed batch shape, for the model as
mtkd builds it ("mtkd_fast_dropout") and the same model on PyTorch's dropout and SDPA
("torch_dropout", the baseline), steps interleaved A B A B; then the forward's top operators of each
by self CPU time (torch.profiler).

    python benchmarks/profile_step.py [--batch 32] [--width 128] [--threads 2] [--repeats 5] [--json PATH]

Prints the breakdown (median ms of the repeats, after 2 warm-up steps each, min-max beside it),
the step-time ratio and the operator tables; a third column, "no_dropout_reference" (all dropout
rates 0), shows what a step costs with no masks at all: the ceiling for this model's step. --json
writes the numbers. Not part of run_all: it explains the efficiency benchmark's numbers
(bench_efficiency measures the loop's FLOP/s).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch

from machine import machine_info
from suite import quiet_hf, use_torch_dropout

PARTS = ("forward", "backward", "clip", "optimizer")


def with_torch_dropout(model):
    """The baseline: the same weights on nn.Dropout and transformers' SDPA attention."""
    return use_torch_dropout(copy.deepcopy(model))


def without_dropout(model):
    """A reference, not a contender: the same weights with every dropout rate 0 (what a step costs
    when no mask is drawn at all; it trains a differently regularised model)."""
    ref = copy.deepcopy(model)
    for m in ref.modules():
        if isinstance(m, torch.nn.Dropout):  # also attention's: BERT passes its self.dropout.p to attention
            m.p = 0.0
    return ref


def models_with_optimizers() -> dict:
    """name -> (model in training mode, its trainable parameters, an Adamax over them)."""
    from mtkd.model import MTModel
    from mtkd.tasks import glue_tasks

    fast = MTModel.from_encoder("default", {"SST-2": glue_tasks()["SST-2"]}).train()
    models = {
        "torch_dropout": with_torch_dropout(fast).train(),
        "mtkd_fast_dropout": fast,
        "no_dropout_reference": without_dropout(fast).train(),
    }
    state = {}
    for name, model in models.items():
        params = [p for p in model.parameters() if p.requires_grad]
        state[name] = (model, params, torch.optim.Adamax(params, lr=1e-5))
    return state


def time_parts(state: dict, inputs: tuple, labels, repeats: int) -> dict:
    """name -> part -> ms of each step after 2 warm-up steps, the models' steps interleaved A B C A B C."""
    times = {n: {k: [] for k in PARTS} for n in state}
    for i in range(repeats + 2):
        for name, (model, params, optimizer) in state.items():
            t0 = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(*inputs, task="SST-2"), labels)
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            t3 = time.perf_counter()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            t4 = time.perf_counter()
            if i >= 2:
                for k, v in zip(PARTS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                    times[name][k].append(v * 1000)
    for name in state:
        times[name]["total"] = [sum(parts) for parts in zip(*(times[name][k] for k in PARTS), strict=True)]
    return times


def print_breakdown(times: dict, med: dict) -> None:
    names = list(times)
    print("| part | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for k in (*PARTS, "total"):
        print(
            f"| {k} | "
            + " | ".join(f"{med[n][k]:.1f} ({min(times[n][k]):.1f}-{max(times[n][k]):.1f})" for n in names)
            + " |"
        )


def top_operators(state: dict, inputs: tuple) -> dict:
    """name -> the forward's 12 top operators by self CPU time (ms); prints the profiler's tables."""
    from torch.profiler import ProfilerActivity, profile

    tops = {}
    for name, (model, _, _) in state.items():
        if name == "no_dropout_reference":
            continue
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            model(*inputs, task="SST-2")
        avg = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:12]
        tops[name] = {e.key: round(e.self_cpu_time_total / 1000, 1) for e in avg}
        print(f"## Forward pass ({name}), top operators by self CPU time\n")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))
    return tops


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    quiet_hf()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    state = models_with_optimizers()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (args.batch, args.width), generator=g)
    inputs = (ids, torch.ones_like(ids), torch.zeros_like(ids))  # input ids, attention mask, token types
    labels = torch.randint(0, 2, (args.batch,), generator=g)
    times = time_parts(state, inputs, labels, args.repeats)
    med = {n: {k: statistics.median(v) for k, v in t.items()} for n, t in times.items()}
    print(
        f"## Step at batch {args.batch} x {args.width} ({args.threads} threads, median (min-max) ms of "
        f"{args.repeats}, interleaved)\n"
    )
    print_breakdown(times, med)
    ratio = med["torch_dropout"]["total"] / med["mtkd_fast_dropout"]["total"]
    print(f"\nstep-time ratio torch_dropout / mtkd_fast_dropout: {ratio:.2f}\n")
    tops = top_operators(state, inputs)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "benchmark": "profile_step",
                    "machine": machine_info(),
                    "settings": {
                        "batch": args.batch,
                        "width": args.width,
                        "threads": args.threads,
                        "repeats": args.repeats,
                    },
                    "ms": times,
                    "median_ms": med,
                    "ratios": {"step_torch_dropout_over_fast_dropout": ratio},
                    "forward_top_ops_ms": tops,
                },
                indent=1,
            )
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
