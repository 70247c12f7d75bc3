"""The student's loss, and each task's own; every loss returns one value per example (B,) so the
loop can reduce them exactly under DDP.

task_loss: the task's own objective, its head kind's hard loss (mtkd.heads: Eq. 2 cross-entropy, MSE
for regression, listwise ranking).
kd_loss: the student's objective on a task with a teacher: a weighted average of the hard loss and
the head kind's soft loss against the teachers' targets (Eq. 4 for classification).
"""

from __future__ import annotations

import torch

from mtkd.heads import KINDS, HeadKind, kind_of
from mtkd.tasks import TaskSpec


def task_loss(spec: TaskSpec, logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """The hard loss of one task's batch (a collate() dict: labels, and groups for ranking). (B,)"""
    return kind_of(spec).loss(logits, batch)


def kd_loss(
    kind: HeadKind,
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    soft: torch.Tensor,
    soft_weight: float = 0.5,
    temperature: float = 1.0,
    has_label: torch.Tensor | None = None,
) -> torch.Tensor:
    """The student's loss on a task with a teacher: (1 - w) * hard + w * soft; w = 0.5 is the
    paper's average of Eq. 2 and Eq. 4. Regression: soft = MSE to the teachers' mean prediction
    `soft` (B,). Examples without a label (has_label False: extra unlabeled text) get the soft
    loss alone. Returns (B,)."""
    rules = KINDS[HeadKind(kind)]
    soft_term = rules.soft_loss(logits, soft, temperature)
    if labels is None:
        return soft_term
    if has_label is not None:  # placeholder labels of unlabeled rows (NaN, -1) must not reach the hard loss
        labels = torch.where(has_label, labels, torch.zeros_like(labels))
    hard_term = rules.hard_loss(logits, labels)
    mixed = (1.0 - soft_weight) * hard_term + soft_weight * soft_term
    if has_label is not None:
        mixed = torch.where(has_label, mixed, soft_term)
    return mixed
