"""Classification: a softmax over the task's labels (paper Eq. 1), cross-entropy (Eq. 2); a
teacher ensemble's soft targets are its averaged class probabilities (Eq. 3), learnt with the
soft cross-entropy (Eq. 4)."""

from __future__ import annotations

import numpy as np

from mtkd.heads.base import HeadKind, HeadKindRules


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = logits / temperature
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


def cross_entropy(logits, labels):
    """Eq. 2 per example: logits (B, C), labels (B,) class indices. Returns (B,)."""
    import torch.nn.functional as F

    return F.cross_entropy(logits.float(), labels.long(), reduction="none")


def soft_cross_entropy(logits, teacher_probs, temperature: float = 1.0):
    """Eq. 4: -sum_c Q(c|X) log P_r(c|X), with Q the teachers' averaged probabilities.

    logits (B, C); teacher_probs (B, C), rows summing to 1, computed by the teachers at the same
    temperature. With T > 1 the student's logits are divided by T and the loss is multiplied by T²
    (Hinton et al.), so the soft term's gradient scale does not shrink with T. T = 1 is the paper.
    Returns (B,)."""
    import torch

    logp = torch.log_softmax(logits.float() / temperature, dim=-1)
    return -(teacher_probs.float() * logp).sum(-1) * (temperature ** 2)


class Classification(HeadKindRules):
    kind = HeadKind.CLASSIFICATION
    metric_names = ("accuracy", "f1", "mcc")

    @classmethod
    def label_problem(cls, spec):
        if len(spec.labels) < 2:
            return "labels", "a classification task needs at least 2 label names"
        return None

    @property
    def num_outputs(self) -> int:
        return len(self.spec.labels)

    def parse_label(self, value: str) -> int:
        if value not in self.spec.labels:
            raise ValueError(f"unknown label {value!r}; task {self.spec.name} expects one of {list(self.spec.labels)}")
        return self.spec.labels.index(value)

    def loss(self, logits, batch):
        return cross_entropy(logits, batch["labels"])

    hard_loss = staticmethod(cross_entropy)  # (logits, labels): the loss the KD mix weighs
    soft_loss = staticmethod(soft_cross_entropy)

    def teacher_output(self, logits, temperature=1.0):
        return softmax(logits, temperature)

    def ensemble_logits(self, average):
        return np.log(np.clip(average, 1e-12, None))

    def predictions(self, logits, groups=None):
        return logits.argmax(-1)

    def fast_scores(self, labels, predictions, groups=None):
        """From the confusion matrix (sklearn's per-call input checks dominate a bootstrap)."""
        k = len(self.spec.labels)
        cm = np.bincount(labels.astype(np.int64) * k + predictions.astype(np.int64), minlength=k * k)
        cm = cm.reshape(k, k).astype(np.float64)
        n, correct, true, pred = cm.sum(), np.trace(cm), cm.sum(1), cm.sum(0)
        out = {}
        for m in self.spec.metrics:
            if m == "accuracy":
                out[m] = correct / n
            elif m == "f1":  # positive class: index 1, as METRIC_FUNCS
                tp = cm[1, 1]
                denom = 2 * tp + (pred[1] - tp) + (true[1] - tp)
                out[m] = 2 * tp / denom if denom else 0.0
            elif m == "mcc":  # the multi-class form sklearn uses
                cov_tp = correct * n - true @ pred
                denom = np.sqrt((n * n - pred @ pred) * (n * n - true @ true))
                out[m] = cov_tp / denom if denom else 0.0
        return {m: 100.0 * float(v) for m, v in out.items()}

    def answers(self, logits, probabilities=False):
        """Label names; with `probabilities`, the (N, C) softmax probabilities instead."""
        if probabilities:
            return softmax(logits)
        return [self.spec.labels[i] for i in logits.argmax(-1)]

    def answer_json(self, logits_row, probabilities):
        out: dict = {"label": self.spec.labels[int(logits_row.argmax())]}  # as `answers`: from the logits
        if probabilities:
            out["probabilities"] = {lab: float(x) for lab, x in zip(self.spec.labels, softmax(logits_row[None, :])[0])}
        return out

    def submission_value(self, prediction) -> str:
        return self.spec.labels[int(prediction)]

    def describe(self):
        return {"output": "label", "labels": list(self.spec.labels)}

    def card_output(self):
        return ", ".join(f"`{lab}`" for lab in self.spec.labels)

    def graph_output(self, y):
        return y

    def graph_shape(self):
        return ["batch", self.num_outputs]
