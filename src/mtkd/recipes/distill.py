"""Recipe: MT-DNN-KD, the distilled student (the paper's step 4, Section 3).

The student is an MTL run (Algorithm 1) in which every teacher task is trained on the mean of its
hard and its soft cross-entropy against the teachers' averaged probabilities,
    (1 - w) * hard cross-entropy (Eq. 2) + w * soft cross-entropy (Eq. 4)   (w = kd.soft_weight = 0.5),
and every other task keeps its hard loss; then per-task fine-tuning (by default with the same KD
loss on teacher tasks, kd.finetune_with_soft). With the soft targets of kd.unlabeled's text
(mtkd.unlabeled) the student also trains on that text (soft loss only). The student's encoder may
differ from the teachers' (kd.student, e.g. fewer layers): soft targets are per example, so nothing
else changes.
Refuses soft targets written for other data (fingerprint) or missing training examples.

The Table 3 experiment around the student is recipes/experiment.py; its report is mtkd.report.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from mtkd import unlabeled
from mtkd.config import RunConfig
from mtkd.errors import ConfigError
from mtkd.losses import kd_loss, task_loss
from mtkd.recipes import finetune, mtl
from mtkd.recipes.runner import FreshEncoder, TrainingJob
from mtkd.soft_targets import SoftTargets
from mtkd.stages import Stages
from mtkd.task_data import TaskData


def jobs(cfg: RunConfig, data: TaskData, out: Path, seed: int, teachers: Path, text: Path | None = None
         ) -> list[TrainingJob]:
    """The student (MTL with soft targets, then fine-tuning) in `out`, from the teacher tasks' soft
    targets in `teachers`. Without `text` this is the paper's MT-DNN-KD; with it (the soft targets
    of kd.unlabeled's text, DIR/teach/unlabeled/soft_targets) the student also trains on that text."""
    if text is not None and not unlabeled.pseudo_tasks(cfg):
        raise ConfigError("distill: unlabeled soft targets given, but kd.unlabeled is empty")
    loss = KDLoss(cfg, data, teachers, text)
    student_mtl = mtl.job(cfg, data, out / "mtl", seed, tasks=student_tasks(cfg, data, text is not None),
                          start=FreshEncoder(cfg.kd.student or cfg.encoder), loss=loss,
                          desc="student mtl" + (" + unlabeled text" if text is not None else ""))
    return [student_mtl] + finetune.jobs(cfg, data, out / "finetune", seed, out / "mtl" / "model",
                                         loss=loss if cfg.kd.finetune_with_soft else None, desc="student finetune")


def student_tasks(cfg: RunConfig, data: TaskData, with_text: bool) -> list[str]:
    """The tasks of a student's MTL: those of MT-DNN's MTL, in the same order (so the paper's student
    sees MT-DNN's batches in MT-DNN's order at the same seed), then, for the student with unlabeled
    text, kd.unlabeled's pseudo-tasks (soft loss only: no labels)."""
    return data.train_tasks() + (list(unlabeled.pseudo_tasks(cfg)) if with_text else [])


@dataclass(frozen=True)
class KDLoss:
    """The student's loss: the KD loss (Eq. 4 mixed with Eq. 2) on each teacher task against the soft
    targets in `teachers` and, with `text`, on kd.unlabeled's pseudo-tasks against theirs (soft
    loss only); each task's own loss elsewhere."""
    cfg: RunConfig
    data: TaskData
    teachers: Path
    text: Path | None = None
    _tables: dict = field(default_factory=dict, compare=False, repr=False)  # task -> targets in row order

    def identity(self, stages: Stages) -> dict:
        """What the loss depends on: the teachers (their stage's key), the KD settings and, for the
        student with unlabeled text, that text's soft targets."""
        kd = self.cfg.kd
        out = {"teachers": _targets_key(stages, self.teachers, kd.teacher_tasks[0] if kd.teacher_tasks else None,
                                        "teacher_key"),
               "soft_weight": kd.soft_weight, "temperature": kd.temperature,
               "soft_tasks": list(kd.teacher_tasks) + list(unlabeled.soft_tasks(self.cfg, self.text))}
        if self.text is not None:
            first = next(iter(unlabeled.pseudo_tasks(self.cfg)), None)
            out["unlabeled_targets"] = _targets_key(stages, self.text, first, "unlabeled_key")
        return out

    def factory(self, model):
        """The loop's loss_fn. Soft targets are aligned to each split's row order once (refused when
        written for other data), so a batch's `index` looks them up."""
        kd = self.cfg.kd
        sources = {t: self.teachers for t in kd.teacher_tasks} | unlabeled.soft_tasks(self.cfg, self.text)
        for task, folder in sources.items():
            if task not in self._tables:
                ts = self.data.train_set(task)
                self._tables[task] = torch.from_numpy(SoftTargets.load(folder, task).aligned_to(ts.data, ts.indices))
        tables = self._tables

        def loss_fn(task, logits, batch):
            kind = model.tasks[task].head
            if task in tables:
                soft = tables[task][batch["index"].cpu()].to(logits.device)
                return kd_loss(kind, logits, batch.get("labels"), soft, kd.soft_weight, kd.temperature)
            return task_loss(model.tasks[task], logits, batch)
        return loss_fn


def _targets_key(stages: Stages, folder: Path, task: str | None, provenance_key: str) -> str | None:
    """The key of the stage of this run that writes `folder`, else (soft targets made by another run)
    the key their provenance names."""
    key = stages.stage_key(folder)
    if key is None and task is not None:
        key = SoftTargets.load(folder, task).provenance.get(provenance_key)
    return key
