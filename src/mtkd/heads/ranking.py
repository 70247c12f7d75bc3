"""Ranking (QNLI as ranking in the paper): one relevance score per (query, candidate), learnt with a
softmax over each query group's candidates; scored per group. No teachers (not supported).

Metrics: `accuracy` is the share of queries, among those with at least one relevant candidate,
whose top-scored candidate is relevant (precision at 1; any number of relevant candidates per
query); `f1` and `mcc` are per candidate, with the top-scored candidate of each query predicted
relevant and the others not, relevant being the positive class.
"""

from __future__ import annotations

import numpy as np

from mtkd.heads.base import METRIC_FUNCS, HeadKind, HeadKindRules


def ranking_loss(scores, labels, groups, positive: int):
    """Pairwise ranking of the paper: for each group (one question and its candidate answers),
    -log softmax over the group's scores at each positive candidate (label index `positive`).
    scores, labels, groups: (B,). Returns (B,): the loss sits on the positives, 0 elsewhere; a group
    with k positives gives each 1/k of the group's loss, and a group with no positive contributes
    nothing."""
    import torch

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


class Ranking(HeadKindRules):
    kind = HeadKind.RANKING
    metric_names = ("accuracy", "f1", "mcc")
    has_teachers = False
    takes_positive_label = True

    @classmethod
    def definition_defaults(cls, definition):
        """Without labels: ["0", "1"], "1" the relevant one."""
        if definition.get("labels"):
            return definition
        return {**definition, "labels": ["0", "1"], "positive_label": definition.get("positive_label") or "1"}

    @classmethod
    def label_problem(cls, spec):
        labels, positive = list(spec.labels), spec.positive_label
        if len(labels) != 2:
            return "labels", f"a ranking task has exactly 2 labels (relevant / not), got {labels}"
        if positive is None:
            return "positive_label", (f"a ranking task with labels {labels} must say which one marks a relevant "
                                      f"candidate, e.g. positive_label: {labels[0]}")
        if positive not in labels:
            return "positive_label", f"{positive!r} is not one of the labels {labels}"
        return None

    @property
    def positive(self) -> int:
        """The index in `labels` of the label that marks a relevant candidate."""
        return self.spec.positive_index

    def parse_label(self, value: str) -> int:
        if value not in self.spec.labels:
            raise ValueError(f"unknown label {value!r}; task {self.spec.name} expects one of {list(self.spec.labels)}")
        return self.spec.labels.index(value)

    def groups(self, text_a):
        """One group per query text (text_a)."""
        return np.unique(np.asarray(text_a, dtype=object), return_inverse=True)[1].astype(np.int64)

    def loss(self, logits, batch):
        if batch.get("groups") is None:
            raise ValueError(f"{self.spec.name}: the ranking loss needs the batch's query groups")
        return ranking_loss(logits.float().squeeze(-1), batch["labels"], batch["groups"], self.positive)

    def predictions(self, logits, groups=None):
        """In each group the top-scored candidate gets the positive label's index, the others the
        other label's (ties: the earlier candidate)."""
        if groups is None:
            raise ValueError(f"{self.spec.name}: ranking predictions are per query group: pass the split's groups")
        scores, groups = logits[:, 0], np.asarray(groups)
        pred = np.full(len(scores), 1 - self.positive, dtype=np.int64)
        order = np.lexsort((-scores, groups))  # by group, best score first
        first = np.ones(len(order), dtype=bool)
        first[1:] = groups[order][1:] != groups[order][:-1]
        pred[order[first]] = self.positive
        return pred

    def scores(self, labels, predictions, groups=None):
        if groups is None:
            raise ValueError(f"{self.spec.name}: ranking metrics are per query group: pass the split's groups")
        relevant = (np.asarray(labels) == self.positive).astype(np.int64)
        picked = (np.asarray(predictions) == self.positive).astype(np.int64)
        _, g = np.unique(np.asarray(groups), return_inverse=True)
        has_relevant = np.bincount(g, weights=relevant) > 0
        hit = np.bincount(g, weights=relevant * picked) > 0
        out = {}
        for m in self.spec.metrics:
            if m == "accuracy":  # per group: the top-scored candidate is relevant
                v = float(hit[has_relevant].mean()) if has_relevant.any() else 0.0
            else:
                v = float(METRIC_FUNCS[m](relevant, picked))
            out[m] = round(100.0 * v, 4)
        return out

    def answers(self, logits, probabilities=False):
        """The relevance scores (ranking among a query's candidates is the caller's)."""
        return logits[:, 0].tolist()

    def card_output(self):
        return f"relevance score (positive: `{self.spec.positive_label}`)"

    def submission_value(self, prediction) -> str:
        return self.spec.labels[int(prediction)]
