"""CPU threads: torch's default (one thread per core) against OMP_NUM_THREADS choices, alone and
with two CPU-heavy processes at once (a torchrun/accelerate job of 2, or two runs side by side).

Each scenario starts P worker processes at the same moment; every worker trains `--steps` MTL
steps (batch 32, dynamic padding, SST-2 + MRPC batches of real training text on the bundled
encoder, AdamW) and then predicts 512 dev texts with `MTModel.predict`. Reported per scenario:
seconds per training step (mean over workers), aggregate training examples/s over all workers,
and aggregate prediction examples/s. Scenarios are interleaved over rounds; the median round is
reported.

    python benchmarks/bench_threads.py            # ~5 minutes on an idle 2-core machine
    python benchmarks/bench_threads.py --smoke    # tiny random encoder, seconds (the test)
Writes results/bench/threads.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from suite import REPO  # noqa: E402  (suite also sets the offline / tokenizer-thread defaults the workers inherit)


def worker(args) -> None:
    import numpy as np
    import torch

    from mtkd.data import read_split, resolve_data_root
    from mtkd.model import MTModel
    from mtkd.tasks import glue_tasks

    specs = {t: glue_tasks()[t] for t in ("SST-2", "MRPC")}
    if args.encoder:
        model = MTModel.from_encoder(args.encoder, specs, init="random")
    else:
        model = MTModel.from_encoder("default", specs)
    tok = model.tokenizer
    root = resolve_data_root(args.data_root)
    rng = np.random.default_rng(0)
    batches = []
    for t in specs:
        raw = read_split(specs[t], "train", root)
        for _ in range(args.steps // 2 + 1):
            rows = rng.choice(len(raw.text_a), 32, replace=False)
            pairs = [raw.text_b[i] for i in rows] if raw.text_b is not None else None
            enc = tok(
                [raw.text_a[i] for i in rows], pairs, truncation=True, max_length=128, padding=True, return_tensors="pt"
            )
            batches.append((t, enc, torch.as_tensor(np.asarray(raw.labels)[rows])))
    batches = batches[: args.steps + 1]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    model.train()

    def step(t, enc, y):
        logits = model(enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids"), task=t)
        loss = torch.nn.functional.cross_entropy(logits, y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(*batches[0])  # warm-up
    t0 = time.perf_counter()
    for b in batches[1:]:
        step(*b)
    train_s = time.perf_counter() - t0
    dev = read_split(specs["SST-2"], "dev", root).text_a[: args.predict]
    model.predict("SST-2", dev[:32])  # warm-up
    t0 = time.perf_counter()
    model.predict("SST-2", dev, batch_size=64)
    predict_s = time.perf_counter() - t0
    print(
        json.dumps(
            {
                "threads": torch.get_num_threads(),
                "train_s": train_s,
                "steps": len(batches) - 1,
                "predict_s": predict_s,
                "predicted": len(dev),
            }
        ),
        flush=True,
    )


SCENARIOS = {  # name -> (processes, OMP_NUM_THREADS or None for torch's default)
    "1 process, default threads": (1, None),
    "1 process, 1 thread": (1, "1"),
    "2 processes, default threads each": (2, None),
    "2 processes, 1 thread each": (2, "1"),
}


def run_scenario(name: str, args) -> dict:
    procs, threads = SCENARIOS[name]
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    env.setdefault("HF_HUB_OFFLINE", "1")
    if threads is not None:
        env["OMP_NUM_THREADS"] = threads
    cmd = [sys.executable, __file__, "--worker", "--steps", str(args.steps), "--predict", str(args.predict)]
    cmd += ["--encoder", args.encoder] if args.encoder else []
    cmd += ["--data-root", args.data_root] if args.data_root else []
    workers = [
        subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(procs)
    ]
    outs = []
    for w in workers:
        out, err = w.communicate()
        if w.returncode != 0:
            raise RuntimeError(f"worker of {name!r} failed:\n{err[-2000:]}")
        outs.append(json.loads(out.strip().splitlines()[-1]))
    return {
        "threads": outs[0]["threads"],
        "processes": procs,
        "step_s": statistics.mean(o["train_s"] / o["steps"] for o in outs),
        "train_examples_per_s": sum(32 * o["steps"] / o["train_s"] for o in outs),
        "predict_examples_per_s": sum(o["predicted"] / o["predict_s"] for o in outs),
    }


def main() -> None:
    p = argparse.ArgumentParser(description="mtkd benchmark: CPU threads")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--smoke", action="store_true", help="tiny random encoder, few steps (the test)")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--predict", type=int, default=512)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--encoder", help="encoder folder (default: the bundled MiniLM)")
    p.add_argument("--data-root")
    p.add_argument("--out", default=str(REPO / "results" / "bench"))
    args = p.parse_args()
    if args.worker:
        return worker(args)
    if args.smoke:
        args.steps, args.predict, args.rounds = 2, 16, 1
        if not args.encoder:
            raise SystemExit("--smoke needs --encoder FOLDER (a tiny encoder, e.g. from mtkd.testing)")
    from machine import machine_info
    from reporting import md_table, write_json

    names = ["1 process, 1 thread", "2 processes, 1 thread each"] if args.smoke else list(SCENARIOS)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(args.rounds):
        for name in names:
            t0 = time.perf_counter()
            runs[name].append(run_scenario(name, args))
            print(
                f"  round {r + 1}/{args.rounds} {name:<36} {runs[name][-1]['step_s']:.3f} s/step "
                f"({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
                flush=True,
            )

    def median(name, key):
        return statistics.median(x[key] for x in runs[name])

    rows = [
        [
            n,
            runs[n][0]["processes"],
            runs[n][0]["threads"],
            median(n, "step_s"),
            median(n, "train_examples_per_s"),
            median(n, "predict_examples_per_s"),
        ]
        for n in names
    ]
    table = md_table(
        ["scenario", "processes", "torch threads each", "s / step (each)", "train ex/s (all)", "predict ex/s (all)"],
        rows,
    )
    print(table)
    doc = {
        "benchmark": "threads",
        "machine": machine_info(),
        "settings": {
            "steps": args.steps,
            "predict": args.predict,
            "rounds": args.rounds,
            "batch": 32,
            "encoder": args.encoder or "default",
        },
        "scenarios": {
            n: {
                "runs": runs[n],
                "median_step_s": median(n, "step_s"),
                "median_train_examples_per_s": median(n, "train_examples_per_s"),
                "median_predict_examples_per_s": median(n, "predict_examples_per_s"),
            }
            for n in names
        },
        "tables": [table],
    }
    print(f"wrote {write_json(Path(args.out), 'threads', doc)}")


if __name__ == "__main__":
    main()
