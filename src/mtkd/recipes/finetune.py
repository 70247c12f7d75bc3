"""Recipe: fine-tune per task (paper Section 2, "fine-tuning"), the same loop with one task.

From an MTL model this is MT-DNN's second stage; from the bare encoder (init_from=None) it is the
single-task baseline (the paper's BERT row). Each task gets DIR/<task>/model and DIR/<task>/DONE.json;
finished tasks are skipped on a rerun, an unfinished one resumes from its checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from mtkd.config import TrainConfig
from mtkd.recipes.context import RunContext
from mtkd.recipes.job import FreshEncoder, FromModel, Loss, TrainingJob, train_stage


def run(ctx: RunContext, out: Path, seed: int, init_from: Path | None, cfg: TrainConfig | None = None,
        tasks: list[str] | None = None, loss: Loss | None = None, desc: str = "finetune") -> dict[str, dict]:
    """Fine-tune `init_from` (None: the config's encoder) on each of `tasks` (default: the config's
    finetune_tasks, else every task with training data), under `cfg` (default: the config's
    `finetune`), with `loss` (default: each task's own). Returns task -> stage summary."""
    start = FromModel(init_from) if init_from else FreshEncoder()
    return {t: train_stage(ctx, out / t, TrainingJob(desc=f"{desc} {t}", seed=seed, tasks=[t], cfg=cfg or ctx.cfg.finetune,
                                                     start=start, loss=loss))
            for t in tasks or ctx.cfg.finetune_tasks or ctx.train_tasks()}
