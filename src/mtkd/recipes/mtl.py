"""Recipe: multi-task learning, Algorithm 1 of the paper.

Trains one MT-DNN on every task that has training data, from the pretrained encoder: single-task
mini-batches of all tasks, merged and shuffled each epoch, one update per batch on that batch's
task loss (cross-entropy, MSE for regression, pairwise ranking). The teacher candidates and the
student are the same job with another start or loss (recipes.teach, recipes.distill).

Writes DIR/model (save_pretrained folder), DIR/metrics.jsonl, DIR/checkpoints, DIR/DONE.json
(recipes.job.train_stage: reused when unchanged, resumed when interrupted).
"""

from __future__ import annotations

from pathlib import Path

from mtkd.config import TrainConfig
from mtkd.recipes.context import RunContext
from mtkd.recipes.job import FreshEncoder, FromModel, Loss, TrainingJob, train_stage


def job(ctx: RunContext, seed: int, *, tasks: list[str] | None = None, cfg: TrainConfig | None = None,
        start: FreshEncoder | FromModel | None = None, loss: Loss | None = None, desc: str = "mtl") -> TrainingJob:
    """Algorithm 1 on `tasks` (default: every task with training data) under `cfg` (default: the
    config's `mtl`), from `start` (default: the config's encoder), with `loss` (default: each
    task's own)."""
    return TrainingJob(desc=desc, seed=seed, tasks=tasks or ctx.train_tasks(), cfg=cfg or ctx.cfg.mtl,
                       start=start or FreshEncoder(), loss=loss)


def run(ctx: RunContext, out: Path, seed: int) -> dict:
    """MT-DNN's multi-task stage. Returns the stage summary (also in out/DONE.json)."""
    return train_stage(ctx, out, job(ctx, seed))
