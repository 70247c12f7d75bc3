"""What every head kind answers, and the defaults most kinds share.

A head kind is a class bound to one task (`kind_of(spec)` in mtkd.heads): it parses the task's
labels, builds the output layer, computes the hard loss, the soft loss against a teacher ensemble's
targets and what a teacher contributes to them, turns logits into predictions (for metrics) and
answers (for people), scores predictions, and describes its ONNX output and its serving schema.
No torch at import: an ONNX export is served without PyTorch.
"""

from __future__ import annotations

from enum import Enum
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    import torch

    from mtkd.tasks import TaskSpec


class HeadKind(str, Enum):
    """The kind of output layer on top of the shared encoder (paper Section 2, output layers)."""

    CLASSIFICATION = "classification"  # softmax over labels, cross-entropy (Eq. 1-2)
    REGRESSION = "regression"  # one score, mean squared error (STS-B)
    RANKING = "ranking"  # one relevance score per (query, candidate); listwise softmax per query


def _pearson(y, p) -> float:
    from scipy.stats import pearsonr

    return pearsonr(y, p)[0] if np.std(p) > 0 else 0.0


def _spearman(y, p) -> float:
    from scipy.stats import spearmanr

    return spearmanr(y, p)[0] if np.std(p) > 0 else 0.0


def _accuracy(y, p) -> float:
    from sklearn.metrics import accuracy_score

    return accuracy_score(y, p)


def _f1(y, p) -> float:  # the second label (index 1) is the positive class
    from sklearn.metrics import f1_score

    return f1_score(y, p, pos_label=1, zero_division=0.0)


def _mcc(y, p) -> float:
    from sklearn.metrics import matthews_corrcoef

    return matthews_corrcoef(y, p)


# metric name -> f(labels, predictions), a fraction (reported x100)
METRIC_FUNCS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "accuracy": _accuracy, "f1": _f1, "mcc": _mcc, "pearson": _pearson, "spearman": _spearman,
}


class HeadKindRules:
    """One head kind's rules, bound to a task (`self.spec`). Subclasses set `kind` and `metric_names`
    and override what differs from these defaults (one score per example, regression-like)."""

    kind: HeadKind
    metric_names: tuple[str, ...] = ()  # the metrics that can score this kind
    has_teachers = True  # can be a teacher task (kd.teacher_tasks)
    label_dtype: Any = np.int64  # how parsed labels are stored
    takes_positive_label = False  # a definition may name the label of a relevant candidate
    takes_label_range = False  # a definition may give [low, high] to clip predictions to

    def __init__(self, spec: TaskSpec):
        self.spec = spec

    # ------------------------------------------------------------------------------ definition
    @classmethod
    def definition_defaults(cls, definition: dict) -> dict:
        """A task definition (its YAML mapping) with this kind's defaults filled in."""
        return definition

    @classmethod
    def label_problem(cls, spec: TaskSpec) -> tuple[str, str] | None:
        """(field, message) when the definition's labels do not suit this kind."""
        return None

    @classmethod
    def definition_problem(cls, spec: TaskSpec) -> tuple[str, str] | None:
        """(field, message) of the first rule of this kind the definition breaks, else None: its
        labels, the fields only some kinds take, the metrics that score it (f1: 2 labels, the second
        positive)."""
        problem = cls.label_problem(spec)
        if problem:
            return problem
        if spec.positive_label is not None and not cls.takes_positive_label:
            return "positive_label", f"only ranking tasks have one (head is {cls.kind.value})"
        for m in spec.metrics:
            if m not in cls.metric_names:
                return "metrics", f"{m!r} does not score a {cls.kind.value} task; use {list(cls.metric_names)}"
            if m == "f1" and len(spec.labels) != 2:
                return "metrics", (f"f1 scores a task with 2 labels (the second is the positive class), this one "
                                   f"has {len(spec.labels)}")
        if spec.label_range is not None and not cls.takes_label_range:
            return "label_range", f"only regression tasks have one (head is {cls.kind.value})"
        return None

    # ------------------------------------------------------------------------------ labels
    @property
    def num_outputs(self) -> int:
        return 1

    def parse_label(self, value: str):
        """A label as written in a data file -> what is stored (ValueError with the reason)."""
        raise NotImplementedError

    def groups(self, text_a: list[str]) -> np.ndarray | None:
        """Query groups of a split's examples (ranking); None for kinds scored per example."""
        return None

    # ------------------------------------------------------------------------------ training
    def make_layer(self, hidden_size: int):
        """The task's output layer on the first token's vector: dropout (the task's own rate) + linear."""
        from mtkd.heads.layer import TaskHead

        return TaskHead(hidden_size, self.kind, self.num_outputs, self.spec.dropout)

    def loss(self, logits: torch.Tensor, batch: dict) -> torch.Tensor:
        """The hard loss of a batch (a collate() dict), one value per example (B,)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------ teachers
    def teacher_output(self, logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
        """What one teacher contributes to the soft targets (averaged over the ensemble, Eq. 3)."""
        raise NotImplementedError(f"{self.kind.value} tasks cannot have teachers")

    def ensemble_logits(self, average: np.ndarray) -> np.ndarray:
        """Logits whose predictions are the averaged ensemble's, to score it like a single model."""
        raise NotImplementedError(f"{self.kind.value} tasks cannot have teachers")

    @staticmethod
    def hard_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The hard loss from the labels alone, (B,): what the KD mix weighs against the soft loss."""
        raise NotImplementedError

    @staticmethod
    def soft_loss(logits: torch.Tensor, soft: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
        """The loss against the teachers' soft targets, (B,)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------ prediction
    def predictions(self, logits: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
        """(N, C) logits -> what metrics and predictions.npz hold (N,): the raw score."""
        return logits[:, 0]

    def scores(self, labels: np.ndarray, predictions: np.ndarray, groups: np.ndarray | None = None
               ) -> dict[str, float]:
        """The task's metrics (x100, rounded to 4 places) of predictions against labels (N,)."""
        return {m: round(100.0 * float(METRIC_FUNCS[m](labels, predictions)), 4) for m in self.spec.metrics}

    def fast_scores(self, labels: np.ndarray, predictions: np.ndarray, groups: np.ndarray | None = None
                    ) -> dict[str, float]:
        """`scores`, unrounded, fast enough to be recomputed thousands of times (the bootstrap of
        mtkd.stats); kinds whose metric library calls dominate that override it."""
        return self.scores(labels, predictions, groups)

    def score(self, logits: np.ndarray, labels: np.ndarray, groups: np.ndarray | None = None) -> dict[str, float]:
        """The metrics of one evaluated split straight from its logits."""
        return self.scores(labels, self.predictions(logits, groups), groups)

    def answers(self, logits: np.ndarray, probabilities: bool = False):
        """(N, C) logits -> what `predict` returns for people: a list of scores."""
        return self.predictions(logits).tolist()

    def answer_json(self, logits_row: np.ndarray, probabilities: bool) -> dict:
        """One example's answer in the HTTP API."""
        return {"score": float(self.answers(logits_row[None, :])[0])}

    def submission_value(self, prediction) -> str:
        """One prediction (as `predictions` gives it) as a leaderboard TSV cell."""
        return f"{float(prediction):.3f}"

    def describe(self) -> dict:
        """What the HTTP API's /tasks says of the task's output."""
        return {"output": "score"}

    def card_output(self) -> str:
        """The model card's "labels / output" cell (Markdown)."""
        return "score"

    # ------------------------------------------------------------------------------ ONNX
    def graph_output(self, y):
        """The head's output in the ONNX graph: the (B,) score."""
        return y[:, 0]

    def graph_shape(self) -> list:
        return ["batch"]
