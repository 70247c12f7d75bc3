"""Regression: one score per example, mean squared error (STS-B). A teacher ensemble's soft target
is its mean prediction, learnt with the squared error to it; answers are clipped to the task's
label range (STS-B: [0, 5]), metrics use the raw scores."""

from __future__ import annotations

import math

import numpy as np

from mtkd.heads.base import HeadKind, HeadKindRules


def squared_error(logits, targets):
    """logits (B, 1), targets (B,). Returns (B,)."""
    return (logits.float().squeeze(-1) - targets.float()) ** 2


class Regression(HeadKindRules):
    kind = HeadKind.REGRESSION
    metric_names = ("pearson", "spearman")
    label_dtype = np.float32
    takes_label_range = True

    def parse_label(self, value: str) -> float:
        try:
            y = float(value)
        except ValueError:
            raise ValueError(f"regression label {value!r} is not a number") from None
        if not math.isfinite(y):
            raise ValueError(f"regression label {value!r} is not finite")
        return y

    def loss(self, logits, batch):
        return squared_error(logits, batch["labels"])

    hard_loss = staticmethod(squared_error)

    @staticmethod
    def soft_loss(logits, soft, temperature=1.0):
        """The squared error to the teachers' mean prediction (temperature does not apply)."""
        return squared_error(logits, soft)

    def teacher_output(self, logits, temperature=1.0):
        return logits[:, 0]

    def ensemble_logits(self, average):
        return average[:, None]

    def fast_scores(self, labels, predictions, groups=None):
        """With numpy's correlations (scipy's per-call checks dominate a bootstrap)."""
        from scipy.stats import rankdata

        out = {}
        for m in self.spec.metrics:
            a, b = (rankdata(labels), rankdata(predictions)) if m == "spearman" else (labels, predictions)
            out[m] = 100.0 * float(np.corrcoef(a, b)[0, 1]) if np.std(predictions) > 0 else 0.0
        return out

    def clipped(self, scores: np.ndarray) -> np.ndarray:
        return np.clip(scores, *self.spec.label_range) if self.spec.label_range is not None else scores

    def answers(self, logits, probabilities=False):
        """Scores clipped to the label range (metrics use the raw ones: `predictions`)."""
        return self.clipped(logits[:, 0]).tolist()

    def submission_value(self, prediction) -> str:
        return f"{float(self.clipped(np.float64(prediction))):.3f}"

    def card_output(self):
        if self.spec.label_range is None:
            return "score"
        low, high = self.spec.label_range
        return f"score in [{low:.4g}, {high:.4g}]"

    def describe(self):
        out = {"output": "score"}
        if self.spec.label_range is not None:
            out["range"] = list(self.spec.label_range)
        return out
