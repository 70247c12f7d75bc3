"""Timing and statistics: contenders interleaved over rounds, median/min/max, paired ratios, and the
step clock that times a training run without changing its loop.

Contenders run A B C A B C ... so slow drift of the machine hits every contender alike; a ratio is
taken round by round (A_r / B_r) and then summarised, so the drift cancels.
"""

from __future__ import annotations

import gc
import statistics
import sys
import time
from collections.abc import Callable


def stats(values) -> dict:
    vals = [float(v) for v in values]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {
        "median": statistics.median(vals),
        "min": min(vals),
        "max": max(vals),
        "n": len(vals),
        "values": [round(v, 6) for v in vals],
    }


def _progress(label: str, tag: str, name: str, res: dict, seconds: float) -> None:
    key = next((k for k in ("examples_per_s", "flop_per_s") if k in res), None)
    shown = f"{key}={res[key]:.3g}" if key else ""
    print(f"  [{label}] {tag:>11} {name:<28} {shown:<26} ({seconds:.1f} s)", file=sys.stderr, flush=True)


def interleave(
    contenders: list[tuple[str, Callable[[int], dict]]], repeats: int, warmup: bool = True, label: str = ""
) -> dict[str, list[dict]]:
    """Run the contenders A B C A B C ...: round -1 is a discarded warm-up, then rounds 0..repeats-1.
    fn(round) returns a dict of measurements; returns name -> list of the timed rounds' dicts."""
    out: dict[str, list[dict]] = {name: [] for name, _ in contenders}
    rounds = ([-1] if warmup else []) + list(range(repeats))
    for r in rounds:
        for name, fn in contenders:
            t0 = time.perf_counter()
            res = fn(r)
            gc.collect()  # one contender's garbage must not be collected on the next one's clock
            _progress(label, "warm-up" if r < 0 else f"round {r + 1}/{repeats}", name, res, time.perf_counter() - t0)
            if r >= 0:
                out[name].append(res)
    return out


def summarize(runs: list[dict], keys=None) -> dict:
    """Each numeric key -> stats over the rounds; plus the raw per-round records."""
    keys = keys or [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {**{k: stats(r[k] for r in runs) for k in keys}, "runs": runs}


def paired_ratio(a: list[dict], b: list[dict], key: str = "examples_per_s") -> dict:
    """stats of a[r][key] / b[r][key] over rounds r (a and b ran in the same rounds)."""
    return stats(x[key] / y[key] for x, y in zip(a, b, strict=True))


class StepClock:
    """Times the training steps of `module`: a forward pre-hook marks the start of each training forward
    (and records its batch shape, real tokens), a global optimizer step post-hook marks each step's end.
    Hooks, not a patched loop, so both frameworks' loops run exactly as shipped. Works for MTModel called
    positionally (mtkd loop) and HF models called with keyword arguments."""

    def __init__(self, module):
        self.module = module
        self.starts: list[float] = []
        self.shapes: list[tuple[int, int, int]] = []  # (batch, padded width, real tokens)
        self.ends: list[float] = []

    def _pre(self, mod, args, kwargs):
        if not mod.training:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        self.starts.append(time.perf_counter())
        self.shapes.append(
            (int(ids.shape[0]), int(ids.shape[1]), int(mask.sum()) if mask is not None else int(ids.numel()))
        )

    def _post(self, opt, args, kwargs):
        self.ends.append(time.perf_counter())

    def __enter__(self):
        self.call_start = time.perf_counter()
        self._forward_hook = self.module.register_forward_pre_hook(self._pre, with_kwargs=True)
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._step_hook = register_optimizer_step_post_hook(self._post)
        return self

    def __exit__(self, *exc):
        self.call_end = time.perf_counter()
        self._forward_hook.remove()
        self._step_hook.remove()

    def result(self, expect_steps: int | None = None) -> dict:
        n = len(self.ends)
        if n == 0 or len(self.starts) < n:
            raise RuntimeError(f"step clock saw {len(self.starts)} forwards and {n} optimizer steps")
        if expect_steps is not None and n != expect_steps:
            raise RuntimeError(f"expected {expect_steps} optimizer steps, saw {n}")
        shapes = self.shapes[:n]
        seconds = self.ends[-1] - self.starts[0]
        examples = sum(s[0] for s in shapes)
        tokens = sum(s[2] for s in shapes)
        padded = sum(s[0] * s[1] for s in shapes)
        after_first = self.ends[-1] - self.ends[0]
        return {
            "steps": n,
            "examples": examples,
            "tokens": tokens,
            "padded_tokens": padded,
            "seconds": seconds,
            "examples_per_s": examples / seconds,
            "tokens_per_s": tokens / seconds,
            "padded_tokens_per_s": padded / seconds,
            "padding_fraction": 1.0 - tokens / padded,
            "first_step_s": self.ends[0] - self.starts[0],
            "steady_examples_per_s": (
                (examples - shapes[0][0]) / after_first if n > 1 and after_first > 0 else examples / seconds
            ),
            "startup_s": self.starts[0] - self.call_start,
            "teardown_s": self.call_end - self.ends[-1],
            "shapes": [list(s) for s in shapes],
        }
