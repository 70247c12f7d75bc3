"""The output layer of the sentence-level head kinds, on the [CLS] vector x (paper Section 2, Eq. 1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from mtkd.heads.base import HeadKind


class TaskHead(nn.Module):
    """dropout(x) -> linear. Classification: (B, C) logits, P = softmax (Eq. 1). Regression and
    ranking: (B, 1) score. The dropout rate is the task's own (MNLI 0.3, CoLA/SST-2 0.05)."""

    def __init__(self, hidden_size: int, kind: HeadKind, num_outputs: int, dropout: float):
        super().__init__()
        self.kind = kind
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_size, num_outputs)

    def forward(self, cls: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(cls))
