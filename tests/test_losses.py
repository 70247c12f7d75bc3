"""Task heads and losses: Eq. 1-2 (hard), Eq. 4 (soft cross-entropy), the KD mixture."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mtkd.heads import kind_of
from mtkd.heads.classification import cross_entropy, soft_cross_entropy
from mtkd.heads.layer import TaskHead
from mtkd.heads.ranking import ranking_loss
from mtkd.heads.regression import squared_error
from mtkd.losses import kd_loss, task_loss
from mtkd.tasks import HeadKind

C, R = HeadKind.CLASSIFICATION, HeadKind.REGRESSION


def log_softmax_np(z):
    z = np.asarray(z, dtype=np.float64)
    return z - math.log(sum(math.exp(v) for v in z))


# ----------------------------------------------------------------------------------------- heads
@pytest.mark.parametrize("kind,n_out,shape", [(C, 3, (5, 3)), (R, 1, (5, 1)), (HeadKind.RANKING, 1, (5, 1))])
def test_task_head_output_shapes(kind, n_out, shape):
    torch.manual_seed(0)
    head = TaskHead(16, kind, n_out, dropout=0.3)
    assert head.kind == kind and head.dropout.p == 0.3
    x = torch.randn(5, 16)
    head.eval()
    out = head(x)
    assert out.shape == shape
    # eval: no dropout, a plain linear layer
    torch.testing.assert_close(out, x @ head.out.weight.T + head.out.bias)


def test_task_head_dropout_active_in_training():
    torch.manual_seed(0)
    head = TaskHead(64, C, 2, dropout=0.5).train()
    x = torch.randn(4, 64)
    assert not torch.allclose(head(x), head.eval()(x))


# ------------------------------------------------------------------------------------ hard losses
def test_hard_loss_classification_is_per_example_cross_entropy():
    torch.manual_seed(0)
    logits = torch.randn(6, 3)
    labels = torch.tensor([0, 2, 1, 1, 0, 2])
    out = cross_entropy(logits, labels)
    assert out.shape == (6,)
    torch.testing.assert_close(out, F.cross_entropy(logits, labels, reduction="none"))
    # and by hand for the first row
    assert out[0].item() == pytest.approx(-log_softmax_np(logits[0].tolist())[0], abs=1e-6)


def test_hard_loss_regression_is_squared_error():
    logits = torch.tensor([[1.0], [2.5], [-0.5]])
    labels = torch.tensor([0.0, 4.0, 0.5])
    out = squared_error(logits, labels)
    torch.testing.assert_close(out, torch.tensor([1.0, 2.25, 1.0]))


def test_ranking_loss_hand_computed():
    scores = torch.tensor([1.0, 2.0, 0.5, 3.0, -1.0, 0.3, 0.7])
    labels = torch.tensor([0, 1, 0, 1, 0, 0, 0])
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2])  # group 2 has no positive
    out = ranking_loss(scores, labels, groups, positive=1)
    g0 = -log_softmax_np([1.0, 2.0, 0.5])[1]
    g1 = -log_softmax_np([3.0, -1.0])[0]
    expected = [0.0, g0, 0.0, g1, 0.0, 0.0, 0.0]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_ranking_loss_two_positives_share_the_group_loss():
    scores = torch.tensor([0.2, 1.0, -0.3])
    out = ranking_loss(scores, torch.tensor([1, 1, 0]), torch.tensor([4, 4, 4]), positive=1)
    lp = log_softmax_np([0.2, 1.0, -0.3])
    np.testing.assert_allclose(out.numpy(), [-lp[0] / 2, -lp[1] / 2, 0.0], rtol=1e-6)


def test_ranking_loss_gradient_flows_within_group():
    scores = torch.tensor([1.0, 2.0, 0.5], requires_grad=True)
    ranking_loss(scores, torch.tensor([0, 1, 0]), torch.tensor([0, 0, 0]), positive=1).sum().backward()
    p = np.exp(log_softmax_np([1.0, 2.0, 0.5]))
    np.testing.assert_allclose(scores.grad.numpy(), p - np.array([0, 1, 0]), rtol=1e-5)


def test_ranking_loss_positive_label_index_zero():
    """QNLI's labels are [entailment, not_entailment]: the relevant candidates have label index 0.
    The loss sits on them (before: on `label > 0`, i.e. on the irrelevant ones)."""
    scores = torch.tensor([1.0, 2.0, 0.5, 3.0, -1.0])
    labels = torch.tensor([0, 1, 1, 1, 0])  # 0 = entailment = relevant
    groups = torch.tensor([0, 0, 0, 1, 1])
    out = ranking_loss(scores, labels, groups, positive=0)
    expected = [-log_softmax_np([1.0, 2.0, 0.5])[0], 0.0, 0.0, 0.0, -log_softmax_np([3.0, -1.0])[1]]
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_ranking_loss_of_a_batch_without_positives_backpropagates_zero():
    """Before: the all-zero loss had no graph, so backward() raised for a batch of queries that
    have no relevant candidate (possible in QNLI)."""
    scores = torch.tensor([0.3, -0.2, 1.0], requires_grad=True)
    out = ranking_loss(scores, torch.tensor([0, 0, 0]), torch.tensor([1, 1, 2]), positive=1)
    out.sum().backward()
    assert out.tolist() == [0.0, 0.0, 0.0] and scores.grad.tolist() == [0.0, 0.0, 0.0]


def test_ranking_loss_without_groups_is_refused():
    """A ranking task's positive label comes from its definition (which requires one: test_ranking);
    its query groups from the batch, which must have them."""
    from mtkd.tasks import task_from_dict

    spec = task_from_dict("R", {"head": "ranking", "fields": {"text_a": "q"}, "splits": {}})
    with pytest.raises(ValueError, match="groups"):
        kind_of(spec).loss(torch.zeros(3, 1), {"labels": torch.tensor([0, 1, 0])})


def test_task_loss_reads_the_positive_label_of_the_spec():
    from mtkd.tasks import task_from_dict

    spec = task_from_dict(
        "QNLIr",
        {
            "head": "ranking",
            "labels": ["entailment", "not_entailment"],
            "positive_label": "entailment",
            "fields": {"text_a": "q"},
            "splits": {},
        },
    )
    batch = {"labels": torch.tensor([1, 0, 0]), "groups": torch.tensor([3, 3, 3])}
    scores = torch.tensor([[0.5], [1.5], [-1.0]])
    lp = log_softmax_np([0.5, 1.5, -1.0])
    np.testing.assert_allclose(task_loss(spec, scores, batch).numpy(), [0.0, -lp[1] / 2, -lp[2] / 2], rtol=1e-6)
    cls = task_from_dict("C", {"head": "classification", "labels": ["a", "b"], "fields": {"text_a": "q"}, "splits": {}})
    logits = torch.tensor([[2.0, 0.0]])
    torch.testing.assert_close(
        task_loss(cls, logits, {"labels": torch.tensor([1])}), cross_entropy(logits, torch.tensor([1]))
    )


# ----------------------------------------------------------------------------------- soft (Eq. 4)
def test_soft_cross_entropy_hand_computed_t1():
    z = [2.0, 1.0, 0.1]
    q = [0.7, 0.2, 0.1]
    out = soft_cross_entropy(torch.tensor([z, [0.0, 0.0, 0.0]]), torch.tensor([q, [1.0, 0.0, 0.0]]))
    lp = log_softmax_np(z)
    row0 = -(0.7 * lp[0] + 0.2 * lp[1] + 0.1 * lp[2])
    row1 = math.log(3.0)  # uniform student, one-hot teacher
    np.testing.assert_allclose(out.numpy(), [row0, row1], rtol=1e-6)
    assert row0 == pytest.approx(0.7 * 0.41703 + 0.2 * 1.41703 + 0.1 * 2.31703, abs=1e-4)


def test_soft_cross_entropy_with_temperature():
    z = [2.0, 1.0, 0.1]
    q = [0.5, 0.3, 0.2]
    T = 2.0
    out = soft_cross_entropy(torch.tensor([z]), torch.tensor([q]), temperature=T)
    lp = log_softmax_np([v / T for v in z])
    expected = -(0.5 * lp[0] + 0.3 * lp[1] + 0.2 * lp[2]) * T**2
    assert out.shape == (1,)
    assert out.item() == pytest.approx(expected, rel=1e-6)
    assert out.item() != pytest.approx(soft_cross_entropy(torch.tensor([z]), torch.tensor([q])).item(), rel=1e-3)


def test_soft_cross_entropy_gradient_is_T_times_p_minus_q():
    torch.manual_seed(0)
    z = torch.randn(3, 4, requires_grad=True)
    q = torch.softmax(torch.randn(3, 4), -1)
    T = 3.0
    soft_cross_entropy(z, q, T).sum().backward()
    p = torch.softmax(z.detach() / T, -1)
    torch.testing.assert_close(z.grad, T * (p - q))


# -------------------------------------------------------------------------------------- kd_loss
@pytest.fixture
def cls_case():
    logits = torch.tensor([[2.0, 1.0, 0.1], [-1.0, 0.5, 0.3]])
    labels = torch.tensor([0, 2])
    q = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]])
    hard = [-log_softmax_np(logits[i].tolist())[labels[i].item()] for i in range(2)]
    soft = [-(np.array(q[i].tolist()) * log_softmax_np(logits[i].tolist())).sum() for i in range(2)]
    return logits, labels, q, np.array(hard), np.array(soft)


def test_kd_loss_default_is_average_of_hard_and_soft(cls_case):
    logits, labels, q, hard, soft = cls_case
    out = kd_loss(C, logits, labels, q)
    np.testing.assert_allclose(out.numpy(), 0.5 * hard + 0.5 * soft, rtol=1e-6)


@pytest.mark.parametrize("w", [0.0, 0.25, 1.0])
def test_kd_loss_soft_weight(cls_case, w):
    logits, labels, q, hard, soft = cls_case
    out = kd_loss(C, logits, labels, q, soft_weight=w)
    np.testing.assert_allclose(out.numpy(), (1 - w) * hard + w * soft, rtol=1e-6)


def test_kd_loss_temperature_scales_soft_term_only(cls_case):
    logits, labels, q, hard, _ = cls_case
    T = 2.0
    soft_t = np.array(
        [
            -(np.array(q[i].tolist()) * log_softmax_np([v / T for v in logits[i].tolist()])).sum() * T**2
            for i in range(2)
        ]
    )
    out = kd_loss(C, logits, labels, q, temperature=T)
    np.testing.assert_allclose(out.numpy(), 0.5 * hard + 0.5 * soft_t, rtol=1e-6)


def test_kd_loss_regression_uses_mse_to_teacher_mean():
    pred = torch.tensor([[1.0], [3.0]])
    labels = torch.tensor([2.0, 3.5])
    teacher = torch.tensor([1.5, 5.0])
    out = kd_loss(R, pred, labels, teacher)
    # hard (1, 0.25), soft (0.25, 4)
    np.testing.assert_allclose(out.numpy(), [0.5 * 1.0 + 0.5 * 0.25, 0.5 * 0.25 + 0.5 * 4.0], rtol=1e-6)
    np.testing.assert_allclose(kd_loss(R, pred, None, teacher).numpy(), [0.25, 4.0], rtol=1e-6)


def test_kd_loss_without_labels_is_soft_only(cls_case):
    logits, _, q, _, soft = cls_case
    np.testing.assert_allclose(kd_loss(C, logits, None, q).numpy(), soft, rtol=1e-6)


def test_kd_loss_unlabeled_rows_get_soft_loss_only(cls_case):
    logits, labels, q, hard, soft = cls_case
    has = torch.tensor([True, False])
    # the unlabeled row carries a placeholder label that is not a class index
    out = kd_loss(C, logits, torch.tensor([0, -1]), q, has_label=has)
    np.testing.assert_allclose(out.numpy(), [0.5 * hard[0] + 0.5 * soft[0], soft[1]], rtol=1e-6)
    out2 = kd_loss(C, logits, labels, q, has_label=has)
    np.testing.assert_allclose(out2.numpy(), [0.5 * hard[0] + 0.5 * soft[0], soft[1]], rtol=1e-6)


def test_kd_loss_unlabeled_regression_rows_with_nan_label_have_finite_gradient():
    pred = torch.tensor([[1.0], [2.0]], requires_grad=True)
    out = kd_loss(
        R, pred, torch.tensor([1.0, float("nan")]), torch.tensor([0.5, 0.5]), has_label=torch.tensor([True, False])
    )
    np.testing.assert_allclose(out.detach().numpy(), [0.5 * 0.0 + 0.5 * 0.25, 2.25], rtol=1e-6)
    out.sum().backward()
    # row 0: 0.5 * 2 * (1 - 1) + 0.5 * 2 * (1 - 0.5); row 1: 2 * (2 - 0.5)
    np.testing.assert_allclose(pred.grad.numpy(), [[0.5], [3.0]], rtol=1e-6)


def test_kd_loss_gradients_flow_to_logits(cls_case):
    logits, labels, q, _, _ = cls_case
    z = logits.clone().requires_grad_(True)
    kd_loss(C, z, labels, q).sum().backward()
    p = torch.softmax(logits, -1)
    onehot = F.one_hot(labels, 3).float()
    # d/dz [0.5 CE(z, y) + 0.5 CE(z, q)] = 0.5 (p - y) + 0.5 (p - q)
    torch.testing.assert_close(z.grad, 0.5 * (p - onehot) + 0.5 * (p - q))
