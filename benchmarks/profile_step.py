"""Where a training step's time goes: forward / backward / grad clip / Adamax step of the default
encoder at a fixed batch shape, then the forward's top operators by self CPU time (torch.profiler).

    python benchmarks/profile_step.py [--batch 32] [--width 128] [--threads 2] [--repeats 5]

Prints the breakdown (median ms of the repeats, after 2 warm-up steps) and the operator table; not
part of run_all (it compares nothing, it explains the efficiency benchmark's gap).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from common import quiet_hf


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    quiet_hf()
    from torch.profiler import ProfilerActivity, profile

    from mtkd.model import MTModel
    from mtkd.tasks import glue_tasks

    torch.set_num_threads(args.threads)
    model = MTModel.from_encoder("default", {"SST-2": glue_tasks()["SST-2"]}).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adamax(params, lr=1e-5)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, (args.batch, args.width), generator=g)
    mask, types = torch.ones_like(ids), torch.zeros_like(ids)
    labels = torch.randint(0, 2, (args.batch,), generator=g)
    parts = {"forward": [], "backward": [], "clip": [], "optimizer": []}
    for i in range(args.repeats + 2):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(ids, mask, types, task="SST-2"), labels)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        t3 = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t4 = time.perf_counter()
        if i >= 2:
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[k].append(v * 1000)
    med = {k: statistics.median(v) for k, v in parts.items()}
    print(f"## Step at batch {args.batch} x {args.width} ({args.threads} threads, median of {args.repeats})\n")
    print("| part | ms |\n|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.1f} |")
    print(f"| total | {sum(med.values()):.1f} |\n")
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        model(ids, mask, types, task="SST-2")
    print("## Forward pass, top operators by self CPU time\n")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))


if __name__ == "__main__":
    main()
