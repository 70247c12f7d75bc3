"""Head kinds: one module per kind of output layer, each owning everything about its kind (label
parsing, the output layer, the hard and soft losses, what a teacher contributes, metrics, logits ->
answer, its ONNX output and serving schema). The rest of mtkd asks `kind_of(spec)`.

Adding a kind: a module here with a `HeadKindRules` subclass, its value in `HeadKind`, its entry in
`KINDS` (docs/architecture.md, "Where to add").
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from mtkd.heads.base import METRIC_FUNCS, HeadKind, HeadKindRules
from mtkd.heads.classification import Classification
from mtkd.heads.ranking import Ranking
from mtkd.heads.regression import Regression

if TYPE_CHECKING:
    from mtkd.tasks import TaskSpec

KINDS: dict[HeadKind, type[HeadKindRules]] = {k.kind: k for k in (Classification, Regression, Ranking)}


def kind_of(spec: TaskSpec) -> HeadKindRules:
    """The rules of the task's head kind, bound to the task."""
    return KINDS[HeadKind(spec.head)](spec)


__all__ = ["HeadKind", "HeadKindRules", "KINDS", "METRIC_FUNCS", "kind_of"]
