"""Recipe: multi-task learning, Algorithm 1 of the paper.

Trains one MT-DNN on every task that has training data, from the pretrained encoder: single-task
mini-batches of all tasks, merged and shuffled each epoch, one update per batch on that batch's
task loss (cross-entropy, MSE for regression, pairwise ranking). The teacher candidates and the
student are the same job with another start or loss (recipes.teach, recipes.distill).

Writes DIR/model (save_pretrained folder), DIR/metrics.jsonl, DIR/checkpoints, DIR/DONE.json
(a recipes.runner.TrainingJob: reused when unchanged, resumed when interrupted).
"""

from __future__ import annotations

from pathlib import Path

from mtkd.config import RunConfig, TrainConfig
from mtkd.recipes.runner import FreshEncoder, FromModel, TrainingJob
from mtkd.task_data import TaskData


def job(cfg: RunConfig, data: TaskData, out: Path, seed: int, *, tasks: list[str] | None = None,
        train: TrainConfig | None = None, start: FreshEncoder | FromModel | None = None, loss=None,
        desc: str = "mtl") -> TrainingJob:
    """Algorithm 1 on `tasks` (default: every task with training data) under `train` (default: the
    config's `mtl`), from `start` (default: the config's encoder), with `loss` (default: each
    task's own), in `out`."""
    return TrainingJob(data, out, desc, seed, tasks or data.train_tasks(), train or cfg.mtl,
                       start or FreshEncoder(cfg.encoder), loss)
