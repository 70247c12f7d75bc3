"""Run `mtkd.cli.main(ARGS)` with test hooks in the training loop (used by the resume and DDP tests).

usage: python tests/_train_helper.py [--record DIR] [--signal-at STEP:SIGNAL] [--nan-at STEP]
                                    [--only-rank R] [--kill-in-save STEP] [--sleep SECONDS] -- ARGS...

--record DIR         every loss computation appends {"task", "index"} to DIR/rank-<rank>.jsonl
--signal-at N:SIG    the process sends itself SIG (KILL, TERM, INT) at the start of update N (0-based),
                     i.e. after N finished updates: a crash or a stop request at a chosen step
--nan-at N           the loss of update N (0-based) is NaN
--only-rank R        under torchrun: only rank R signals itself / sees the NaN (default: every rank)
--kill-in-save N     SIGKILL while the checkpoint of step N is being written: its files are in the
                     temporary folder, not yet renamed (the metrics log is already flushed)
--sleep S            sleep S seconds per update (gives an outside signal time to arrive mid-run)

The hooks wrap `mtkd.loop.lr_at` (called once at the start of every update), `mtkd.loop.default_loss`
and `os.rename`; none changes what is computed unless asked to (--nan-at).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--record", type=Path)
    ap.add_argument("--signal-at")
    ap.add_argument("--nan-at", type=int)
    ap.add_argument("--only-rank", type=int)
    ap.add_argument("--kill-in-save", type=int)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("args", nargs=argparse.REMAINDER)
    opts = ap.parse_args()
    args = opts.args[1:] if opts.args[:1] == ["--"] else opts.args

    import torch

    torch.set_num_threads(1)
    import mtkd.loop as loop

    real_lr_at, real_default_loss = loop.lr_at, loop.default_loss
    rank = int(os.environ.get("RANK", "0"))
    sig_step, sig = None, None
    this_rank = opts.only_rank in (None, rank)
    if opts.signal_at and this_rank:
        s, name = opts.signal_at.split(":")
        sig_step, sig = int(s), getattr(signal, f"SIG{name}")

    def lr_at(step, total, cfg):
        if step == sig_step:
            os.kill(os.getpid(), sig)
        if opts.sleep:
            time.sleep(opts.sleep)
        return real_lr_at(step, total, cfg)

    loop.lr_at = lr_at

    if opts.kill_in_save is not None:
        real_rename = os.rename

        def rename(src, dst, *a, **k):  # save_checkpoint's last move: temp folder -> step-<N>
            if Path(dst).name == f"step-{opts.kill_in_save:09d}":
                os.kill(os.getpid(), signal.SIGKILL)
            return real_rename(src, dst, *a, **k)

        os.rename = rename

    if opts.record is not None:
        opts.record.mkdir(parents=True, exist_ok=True)
        out = open(opts.record / f"rank-{rank}.jsonl", "a")
    calls = []

    def default_loss(model):
        fn = real_default_loss(model)

        def hooked(task, logits, batch):
            calls.append(task)
            if opts.record is not None:
                out.write(json.dumps({"task": task, "index": batch["index"].tolist()}) + "\n")
                out.flush()
            loss = fn(task, logits, batch)
            if opts.nan_at is not None and this_rank and len(calls) == opts.nan_at + 1:
                loss = loss * float("nan")
            return loss

        return hooked

    loop.default_loss = default_loss

    from mtkd.cli import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
