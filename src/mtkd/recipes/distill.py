"""Recipe: MT-DNN-KD, the distilled student (the paper's step 4, Section 3).

The student is an MTL run (Algorithm 1) in which every teacher task is trained on the mean of its
hard and its soft cross-entropy against the teachers' averaged probabilities,
    (1 - w) * hard cross-entropy (Eq. 2) + w * soft cross-entropy (Eq. 4)   (w = kd.soft_weight = 0.5),
and every other task keeps its hard loss; then per-task fine-tuning (by default with the same KD
loss on teacher tasks, kd.finetune_with_soft). With the soft targets of kd.unlabeled's text the
student also trains on that text (soft loss only). The student's encoder may differ from the
teachers' (kd.student, e.g. fewer layers): soft targets are per example, so nothing else changes.
Refuses soft targets written for other data (fingerprint) or missing training examples.

The Table 3 experiment around the student is recipes/experiment.py; its report is mtkd.report.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mtkd.errors import ConfigError
from mtkd.losses import kd_loss, task_loss
from mtkd.recipes import finetune, mtl
from mtkd.recipes.context import RunContext
from mtkd.recipes.job import FreshEncoder, Loss, train_stage
from mtkd.soft_targets import SoftTargets


def kd_loss_factory(ctx: RunContext, soft_dir: Path, unlabeled_dir: Path | None = None):
    """loss_fn factory for mtkd.loop.train: the KD loss on teacher tasks (soft targets in `soft_dir`)
    and, with `unlabeled_dir`, on kd.unlabeled's pseudo-tasks (soft loss only); the hard loss
    elsewhere. Soft targets are aligned to each split's row order once, so a batch's `index` looks them up."""
    kd = ctx.cfg.kd
    tables = {}
    sources = [(t, soft_dir) for t in kd.teacher_tasks] + [(t, unlabeled_dir) for t in ctx.unlabeled_tasks() if unlabeled_dir]
    for task, folder in sources:
        ts = ctx.train_set(task)
        tables[task] = torch.from_numpy(SoftTargets.load(folder, task).aligned_to(ts.data, ts.indices))

    def factory(model):
        def loss_fn(task, logits, batch):
            kind = model.tasks[task].head
            if task in tables:
                soft = tables[task][batch["index"].cpu()].to(logits.device)
                return kd_loss(kind, logits, batch.get("labels"), soft, kd.soft_weight, kd.temperature)
            return task_loss(model.tasks[task], logits, batch)
        return loss_fn
    return factory


def _targets_key(ctx: RunContext, folder: Path, task: str, field: str) -> str | None:
    """The key of the stage of this run that writes `folder`, else (soft targets made by another run)
    the key their provenance names."""
    key = ctx.stages.stage_key(folder)
    if key is None and task is not None:
        key = SoftTargets.load(folder, task).provenance.get(field)
    return key


def soft_loss_identity(ctx: RunContext, soft_dir: Path, unlabeled_dir: Path | None = None) -> dict:
    """What the student's loss depends on: the teachers (their stage's key), the KD settings and,
    for the student with unlabeled text, that text's soft targets."""
    kd = ctx.cfg.kd
    teachers = _targets_key(ctx, soft_dir, kd.teacher_tasks[0] if kd.teacher_tasks else None, "teacher_key")
    out = {"teachers": teachers, "soft_weight": kd.soft_weight, "temperature": kd.temperature,
           "soft_tasks": list(kd.teacher_tasks) + (list(ctx.unlabeled_tasks()) if unlabeled_dir is not None else [])}
    if unlabeled_dir is not None:
        out["unlabeled_targets"] = _targets_key(ctx, unlabeled_dir, next(iter(ctx.unlabeled_tasks()), None), "unlabeled_key")
    return out


def student_tasks(ctx: RunContext, unlabeled: bool) -> list[str]:
    """The tasks of a student's MTL: those of MT-DNN's MTL, in the same order (so the paper's student
    sees MT-DNN's batches in MT-DNN's order at the same seed), then, for the student with unlabeled
    text, kd.unlabeled's pseudo-tasks (soft loss only: no labels)."""
    return ctx.train_tasks() + (list(ctx.unlabeled_tasks()) if unlabeled else [])


def run(ctx: RunContext, out: Path, seed: int, soft_dir: Path, unlabeled_dir: Path | None = None) -> dict[str, Path]:
    """Train the student (MTL with soft targets, then fine-tune). Returns task -> model folder.
    Without `unlabeled_dir` this is the paper's MT-DNN-KD; with it (the soft targets of
    kd.unlabeled's text, teach.label_unlabeled) the student also trains on that text."""
    if unlabeled_dir is not None and not ctx.unlabeled_tasks():
        raise ConfigError("distill: unlabeled soft targets given, but kd.unlabeled is empty")
    # the KD loss on teacher tasks (Eq. 4 mixed with Eq. 2), each task's own loss elsewhere
    loss = Loss(factory=None if ctx.stages.planning else kd_loss_factory(ctx, soft_dir, unlabeled_dir),
                identity=soft_loss_identity(ctx, soft_dir, unlabeled_dir))
    student_mtl = mtl.job(ctx, seed, tasks=student_tasks(ctx, unlabeled_dir is not None),
                          start=FreshEncoder(encoder_cfg=ctx.cfg.kd.student), loss=loss,
                          desc="student mtl" + (" + unlabeled text" if unlabeled_dir is not None else ""))
    train_stage(ctx, out / "mtl", student_mtl)
    finetune.run(ctx, out / "finetune", seed, out / "mtl" / "model", loss=loss if ctx.cfg.kd.finetune_with_soft else None,
                 desc="student finetune")
    return {t: out / "finetune" / t / "model" for t in (ctx.cfg.finetune_tasks or ctx.train_tasks())}
