"""What one dropout costs, forward + backward, on the two tensors a training step of the default
encoder drops: attention probabilities (softmax then dropout, batch x heads x L x L) and hidden states
(batch x L x 384). Contenders, interleaved, median (min-max) of the repeats:

- torch: PyTorch's dropout (`bernoulli_` float mask), what transformers runs;
- mtkd: `mtkd.dropout` (16-bit masks, boolean `where`), what mtkd trains with on CPU;
- compiled: the same computation written for `torch.compile` (inductor generates one C++ kernel with
  its own random numbers, mask, softmax and scale fused), the obvious lever;
- none: the op without dropout (softmax alone / identity), the floor.

    python benchmarks/bench_dropout_ops.py [--batch 32] [--width 128] [--repeats 10] [--json PATH]

Not part of run_all: it explains the gap between profile_step's mtkd step and its no-dropout reference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from machine import machine_info
from reporting import md_table

P = 0.1


def _compiled_softmax_dropout(scores: torch.Tensor, p: float) -> torch.Tensor:
    probs = scores.softmax(-1)
    return torch.where(torch.rand_like(probs) >= p, probs, 0.0)


def _compiled_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    return torch.where(torch.rand_like(x) >= p, x, 0.0) * (1.0 / (1.0 - p))


def contenders() -> dict[str, dict[str, callable]]:
    from mtkd.dropout import fast_dropout, keep_mask

    c_attn = torch.compile(_compiled_softmax_dropout, dynamic=False)
    c_drop = torch.compile(_compiled_dropout, dynamic=False)
    return {
        "attention": {
            "torch": lambda s: F.dropout(s.softmax(-1), P),
            "mtkd": lambda s: torch.where(keep_mask(s.shape, P), s.softmax(-1), 0.0),  # as mtkd's attention does
            "compiled": lambda s: c_attn(s, P),
            "none": lambda s: s.softmax(-1),
        },
        "hidden": {
            "torch": lambda h: F.dropout(h, P),
            "mtkd": lambda h: fast_dropout(h, P),
            "compiled": lambda h: c_drop(h, P),
            "none": lambda h: h * 1.0,  # an op, so backward has a node as for the others
        },
    }


def time_fwd_bwd(fn, x: torch.Tensor) -> tuple[float, float]:
    x.grad = None
    t0 = time.perf_counter()
    y = fn(x)
    t1 = time.perf_counter()
    y.backward(torch.ones_like(y))
    return (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=384)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    inputs = {
        "attention": torch.randn(args.batch, args.heads, args.width, args.width, requires_grad=True),
        "hidden": torch.randn(args.batch, args.width, args.hidden, requires_grad=True),
    }
    fns = contenders()
    compile_s = {}
    for op, x in inputs.items():  # warm-up; the compiled contender compiles here
        for name, fn in fns[op].items():
            t = time.perf_counter()
            time_fwd_bwd(fn, x)
            if name == "compiled":
                compile_s[op] = time.perf_counter() - t
    ms = {op: {name: {"forward": [], "backward": []} for name in fns[op]} for op in inputs}
    for _ in range(args.repeats):
        for op, x in inputs.items():
            for name, fn in fns[op].items():
                f, b = time_fwd_bwd(fn, x)
                ms[op][name]["forward"].append(f)
                ms[op][name]["backward"].append(b)
    med = {
        op: {name: {k: statistics.median(v) for k, v in parts.items()} for name, parts in by.items()}
        for op, by in ms.items()
    }
    for op in med:
        for name in med[op]:
            med[op][name]["total"] = med[op][name]["forward"] + med[op][name]["backward"]
    rows = []
    for op, by in ms.items():
        for name, parts in by.items():
            rows.append(
                [
                    op,
                    name,
                    *(
                        f"{med[op][name][k]:.2f} ({min(parts[k]):.2f}-{max(parts[k]):.2f})"
                        for k in ("forward", "backward")
                    ),
                    f"{med[op][name]['total']:.2f}",
                ]
            )
    print(
        f"## Dropout p={P} at batch {args.batch} x {args.width} ({args.threads} threads, median (min-max) ms "
        f"of {args.repeats}, interleaved)\n"
    )
    print(md_table(["tensor", "contender", "forward", "backward", "total"], rows))
    ratios = {f"{op}_compiled_over_mtkd": med[op]["compiled"]["total"] / med[op]["mtkd"]["total"] for op in med}
    ratios.update({f"{op}_torch_over_mtkd": med[op]["torch"]["total"] / med[op]["mtkd"]["total"] for op in med})
    print("\n" + ", ".join(f"{k} {v:.2f}" for k, v in ratios.items()))
    print("compile time (s): " + ", ".join(f"{k} {v:.1f}" for k, v in compile_s.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(
            json.dumps(
                {
                    "benchmark": "dropout_ops",
                    "machine": machine_info(),
                    "p": P,
                    "settings": {
                        k: getattr(args, k) for k in ("batch", "width", "heads", "hidden", "threads", "repeats")
                    },
                    "ms": ms,
                    "median_ms": med,
                    "ratios": ratios,
                    "compile_s": compile_s,
                },
                indent=1,
            )
        )
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
