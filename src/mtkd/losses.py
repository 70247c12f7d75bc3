"""Losses, each returning one value per example (B,) so the loop can reduce them exactly under DDP.

hard_loss: the task's own objective (Eq. 2 cross-entropy; MSE for regression; listwise ranking).
task_loss: hard_loss for one task's batch, reading what the task spec says (ranking: the positive label).
soft_cross_entropy: Eq. 4, cross-entropy against the teachers' averaged probabilities.
kd_loss: the student's objective on a task with a teacher: a weighted average of the two.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mtkd.tasks import HeadKind, TaskSpec


def hard_loss(kind: HeadKind, logits: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None = None,
              positive: int | None = None) -> torch.Tensor:
    """logits (B, C) or (B, 1); labels (B,) class index or float target. Returns (B,).
    Ranking also needs `groups` (B,) and `positive`, the label index of a relevant candidate
    (`TaskSpec.positive_index`; `task_loss` passes both)."""
    if kind == HeadKind.CLASSIFICATION:
        return F.cross_entropy(logits.float(), labels.long(), reduction="none")
    if kind == HeadKind.REGRESSION:
        return (logits.float().squeeze(-1) - labels.float()) ** 2
    if groups is None or positive is None:
        raise ValueError("the ranking loss needs the batch's groups and the positive label index "
                         "(call task_loss(spec, logits, batch), or hard_loss(..., groups, spec.positive_index))")
    return ranking_loss(logits.float().squeeze(-1), labels, groups, positive)


def task_loss(spec: TaskSpec, logits: torch.Tensor, batch: dict) -> torch.Tensor:
    """The hard loss of one task's batch (a collate() dict: labels, and groups for ranking). (B,)"""
    positive = spec.positive_index if spec.head == HeadKind.RANKING else None
    return hard_loss(spec.head, logits, batch["labels"], batch.get("groups"), positive)


def ranking_loss(scores: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor, positive: int) -> torch.Tensor:
    """Pairwise ranking of the paper (QNLI as ranking): for each group (one question and its
    candidate answers), -log softmax over the group's scores at each positive candidate (label
    index `positive`). scores, labels, groups: (B,). Returns (B,): the loss sits on the positives,
    0 elsewhere; a group with k positives gives each 1/k of the group's loss, and a group with no
    positive contributes nothing."""
    out = scores * 0.0  # zeros that keep the graph: a batch without any positive still backpropagates
    for g in torch.unique(groups):
        m = groups == g
        pos = labels[m] == positive
        if pos.any():
            logp = torch.log_softmax(scores[m], dim=0)
            vals = torch.zeros_like(logp)
            vals[pos] = -logp[pos] / pos.sum()
            out[m] = vals
    return out


def soft_cross_entropy(logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Eq. 4: -sum_c Q(c|X) log P_r(c|X), with Q the teachers' averaged probabilities.

    logits (B, C); teacher_probs (B, C), rows summing to 1, computed by the teachers at the same
    temperature. With T > 1 the student's logits are divided by T and the loss is multiplied by T²
    (Hinton et al.), so the soft term's gradient scale does not shrink with T. T = 1 is the paper.
    Returns (B,)."""
    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(teacher_probs.float() * logp).sum(-1) * (temperature ** 2)


def kd_loss(kind: HeadKind, logits: torch.Tensor, labels: torch.Tensor | None, soft: torch.Tensor,
            soft_weight: float = 0.5, temperature: float = 1.0, has_label: torch.Tensor | None = None) -> torch.Tensor:
    """The student's loss on a task with a teacher: (1 - w) * hard + w * soft; w = 0.5 is the
    paper's average of Eq. 2 and Eq. 4. Regression: soft = MSE to the teachers' mean prediction
    `soft` (B,). Examples without a label (has_label False: extra unlabeled text) get the soft
    loss alone. Returns (B,)."""
    if kind == HeadKind.REGRESSION:
        soft_term = (logits.float().squeeze(-1) - soft.float()) ** 2
    else:
        soft_term = soft_cross_entropy(logits, soft, temperature)
    if labels is None:
        return soft_term
    if has_label is not None:  # placeholder labels of unlabeled rows (NaN, -1) must not reach the hard loss
        labels = torch.where(has_label, labels, torch.zeros_like(labels))
    hard_term = hard_loss(kind, logits, labels)
    mixed = (1.0 - soft_weight) * hard_term + soft_weight * soft_term
    if has_label is not None:
        mixed = torch.where(has_label, mixed, soft_term)
    return mixed
