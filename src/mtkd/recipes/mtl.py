"""Recipe: multi-task learning, Algorithm 1 of the paper.

Trains one MT-DNN on every task that has training data: single-task mini-batches of all tasks,
merged and shuffled each epoch, one update per batch on that batch's task loss. With `loss_fn`
(the distill recipe) the loss of teacher tasks also reads the soft targets.

Writes DIR/model (save_pretrained folder), DIR/metrics.jsonl, DIR/checkpoints, DIR/DONE.json.
Resumes from DIR/checkpoints; refuses a checkpoint of another task set or encoder.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from mtkd.config import TrainConfig
from mtkd.loop import LossFn, train
from mtkd.recipes.context import RunContext


def run(ctx: RunContext, out: Path, seed: int, tasks: list[str] | None = None, cfg: TrainConfig | None = None,
        init_from: Path | None = None, dropout: float | None = None, encoder: str | None = None,
        loss_fn_factory=None, desc: str = "mtl", encoder_cfg=None) -> dict:
    """Train (or resume) and save to out/model. Returns the stage summary (also in out/DONE.json)."""
    done = ctx.stage_done(out)
    if done is not None:
        return done
    cfg = cfg or ctx.cfg.mtl
    tasks = tasks or ctx.train_tasks()
    train_sets = {t: ctx.train_set(t) for t in tasks}
    torch.manual_seed(seed)  # the fresh heads' initialisation depends on the seed only
    if init_from:
        model = ctx.load_model(init_from)
    else:
        model = ctx.new_model(dropout=dropout, encoder=encoder, encoder_cfg=encoder_cfg)
    loss_fn: LossFn | None = loss_fn_factory(model) if loss_fn_factory else None
    out.mkdir(parents=True, exist_ok=True)
    summary = train(model, train_sets, cfg, seed, out, ctx.accelerator, loss_fn=loss_fn,
                    run_config=ctx.config_dict(), desc=desc)
    if ctx.main:
        model.save_pretrained(out / "model")
    summary.update(tasks=tasks, seed=seed, train_examples={t: len(s.indices) for t, s in train_sets.items()})
    ctx.mark_done(out, summary)
    if ctx.main:  # the finished model is in out/model; the resume state is no longer needed
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return summary
