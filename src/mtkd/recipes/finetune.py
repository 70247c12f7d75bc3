"""Recipe: fine-tune per task (paper Section 2, "fine-tuning"), the same loop with one task.

From an MTL model this is MT-DNN's second stage; from the bare encoder (init_from=None) it is the
single-task baseline (the paper's BERT row). Each task gets DIR/<task>/model and DIR/<task>/DONE.json;
finished tasks are skipped on a rerun, an unfinished one resumes from its checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from mtkd.config import RunConfig, TrainConfig
from mtkd.recipes.runner import FreshEncoder, FromModel, TrainingJob
from mtkd.task_data import TaskData


def jobs(cfg: RunConfig, data: TaskData, out: Path, seed: int, init_from: Path | None, *,
         train: TrainConfig | None = None, tasks: list[str] | None = None, loss=None,
         desc: str = "finetune") -> list[TrainingJob]:
    """Fine-tune `init_from` (None: the config's encoder) on each of `tasks` (default: the config's
    finetune_tasks, else every task with training data) in `out`/<task>, under `train` (default:
    the config's `finetune`), with `loss` (default: each task's own)."""
    start = FromModel(init_from) if init_from else FreshEncoder(cfg.encoder)
    return [TrainingJob(data, out / t, f"{desc} {t}", seed, [t], train or cfg.finetune, start, loss)
            for t in tasks or cfg.finetune_tasks or data.train_tasks()]
