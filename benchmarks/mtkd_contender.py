"""mtkd's own training loop as a benchmark contender: `mtkd.loop.train`, unmodified, with the config's
MTL settings, timed by a StepClock."""

from __future__ import annotations

import gc
import shutil
import tempfile
from pathlib import Path

import numpy as np

from suite import BATCH, LR, Env
from timing import StepClock


def mtkd_train_config(env: Env, steps: int):
    """The config's MTL settings (Adamax, lr 2e-4, clip 1.0, bucket 50, warm-up 0.1), max_steps=steps;
    no checkpoint inside the timed steps (the final one is tear-down, timed apart)."""
    return env.cfg.mtl.model_copy(update=dict(batch_size=BATCH, lr=LR, max_steps=steps, checkpoint_every=10 ** 9))


def _steps_of(train_sets: dict) -> int:
    return sum(len(s.indices) // BATCH for s in train_sets.values())


def mtkd_batches(env: Env, train_sets: dict, seed: int) -> list[tuple[str, np.ndarray]]:
    """The batches (task, indices), in order, that mtkd.loop.train will draw in its first epoch over
    `train_sets` with this seed: the loop's own sampler built with the loop's arguments. (Checked
    against what the loop actually ran: bench_train compares the step shapes.)"""
    from mtkd.loop import make_sampler

    return make_sampler(train_sets, mtkd_train_config(env, _steps_of(train_sets)), seed).epoch_batches(0)


def run_mtkd(env: Env, train_sets: dict, seed: int, loss_fn_factory=None, model=None) -> dict:
    """One call of mtkd's own training loop over one pass of `train_sets`, max_steps = the number of
    batches; StepClock's record plus the loop's own `seconds`."""
    from mtkd.loop import train

    steps = _steps_of(train_sets)
    model = model if model is not None else env.new_model()
    cfg = mtkd_train_config(env, steps)
    run_dir = Path(tempfile.mkdtemp(prefix="mtkd-run-", dir=env.work))
    loss_fn = loss_fn_factory(model) if loss_fn_factory else None
    try:
        with StepClock(model) as clock:
            summary = train(model, train_sets, cfg, seed, run_dir, env.accelerator, loss_fn=loss_fn, desc="bench")
        res = clock.result(expect_steps=steps)
        res["loop_reported_seconds"] = float(summary["seconds"])
        return res
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        del model
        gc.collect()
