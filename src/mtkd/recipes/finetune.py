"""Recipe: fine-tune per task (paper Section 2, "fine-tuning"), the same loop with one task.

From an MTL model this is MT-DNN's second stage; from the bare encoder (init_from=None) it is the
single-task baseline (the paper's BERT row). Each task gets DIR/<task>/model and DIR/<task>/DONE.json;
finished tasks are skipped on a rerun, an unfinished one resumes from its checkpoints.
"""

from __future__ import annotations

from pathlib import Path

from mtkd.config import TrainConfig
from mtkd.recipes import mtl
from mtkd.recipes.context import RunContext


def run(ctx: RunContext, out: Path, seed: int, init_from: Path | None, cfg: TrainConfig | None = None,
        tasks: list[str] | None = None, loss_fn_factory=None, loss_identity: dict | None = None,
        desc: str = "finetune") -> dict[str, dict]:
    """Returns task -> stage summary."""
    cfg = cfg or ctx.cfg.finetune
    tasks = tasks or ctx.cfg.finetune_tasks or ctx.train_tasks()
    return {t: mtl.run(ctx, out / t, seed, tasks=[t], cfg=cfg, init_from=init_from,
                       loss_fn_factory=loss_fn_factory, loss_identity=loss_identity, desc=f"{desc} {t}") for t in tasks}
