"""Soft targets: Eq. 3 averaging, the on-disk store, alignment with shuffled/cached data, refusals."""

import json

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from mtkd.data import encode_split, subsample
from mtkd.errors import SoftTargetError
from mtkd.heads.classification import softmax
from mtkd.losses import kd_loss
from mtkd.sampler import MultiTaskBatchSampler
from mtkd.soft_targets import SoftTargets, ensemble_average
from mtkd.tasks import glue_tasks


def test_ensemble_average_is_eq3_mean_of_member_probabilities():
    p1 = np.array([[0.9, 0.1], [0.2, 0.8]])
    p2 = np.array([[0.5, 0.5], [0.4, 0.6]])
    p3 = np.array([[0.7, 0.3], [0.0, 1.0]])
    q = ensemble_average([p1, p2, p3])
    np.testing.assert_allclose(q, [[0.7, 0.3], [0.2, 0.8]])
    np.testing.assert_allclose(q.sum(-1), 1.0)
    # regression teachers: the mean prediction
    np.testing.assert_allclose(ensemble_average([np.array([1.0, 4.0]), np.array([2.0, 5.0])]), [1.5, 4.5])
    with pytest.raises(SoftTargetError, match="shape"):
        ensemble_average([p1, p1[:1]])


def test_softmax_with_temperature():
    z = np.array([[2.0, 0.0]])
    np.testing.assert_allclose(softmax(z), [[np.exp(2) / (np.exp(2) + 1), 1 / (np.exp(2) + 1)]])
    np.testing.assert_allclose(softmax(z, 2.0), [[np.e / (np.e + 1), 1 / (np.e + 1)]])


@pytest.fixture
def rte(glue_root, tiny_encoder, tmp_path):
    spec = glue_tasks()["RTE"]
    tok = AutoTokenizer.from_pretrained(str(tiny_encoder))
    data = encode_split(spec, "train", tok, 32, tmp_path / "cache", glue_root)
    return spec, data, tok


def _store(data, indices, fp=None):
    # a recognisable target per example: p(entailment) = (position + 1) / 100
    vals = np.stack([[(i + 1) / 100, 1 - (i + 1) / 100] for i in indices]).astype(np.float32)
    return SoftTargets("RTE", [data.ids[i] for i in indices], vals, {"data_fingerprint": fp or data.fingerprint})


def test_store_round_trip_and_alignment_after_shuffle_and_cache(rte, tmp_path, glue_root):
    spec, data, tok = rte
    idx = subsample(len(data), 30, seed=3)
    shuffled = np.random.default_rng(0).permutation(idx)  # written in a different order than the data
    _store(data, shuffled).save(tmp_path / "soft")
    loaded = SoftTargets.load(tmp_path / "soft", "RTE")
    assert loaded.ids == [data.ids[i] for i in shuffled]
    # the cache is reopened (a later process) and the sampler shuffles: lookups still hit the right rows
    data2 = encode_split(spec, "train", tok, 32, tmp_path / "cache", glue_root)
    table = torch.from_numpy(loaded.aligned_to(data2, idx))
    sampler = MultiTaskBatchSampler({"RTE": idx}, 8, seed=1)
    seen = 0
    for _, batch_idx, _ in sampler:
        got = table[torch.from_numpy(batch_idx)]
        np.testing.assert_allclose(got[:, 0].numpy(), (batch_idx + 1) / 100, rtol=1e-6)
        seen += len(batch_idx)
    assert seen == len(idx)
    assert torch.isnan(table[[i for i in range(len(data2)) if i not in set(idx)]]).all()


def test_fingerprint_mismatch_is_refused(rte):
    _, data, _ = rte
    with pytest.raises(SoftTargetError, match="fingerprint"):
        _store(data, np.arange(5), fp="0" * 64).aligned_to(data, np.arange(5))


def test_missing_and_extra_ids_are_refused(rte):
    _, data, _ = rte
    st = _store(data, np.arange(5))
    with pytest.raises(SoftTargetError, match=r"no soft target.*" + data.ids[6]):
        st.aligned_to(data, np.arange(8))
    st.ids[0] = "not-an-id"
    with pytest.raises(SoftTargetError, match="not-an-id"):
        st.aligned_to(data, np.arange(1, 5))


def test_missing_store_file_is_refused(tmp_path):
    with pytest.raises(SoftTargetError, match="no soft targets for task 'RTE'"):
        SoftTargets.load(tmp_path, "RTE")


def test_store_rows_must_match_ids(tmp_path, rte):
    _, data, _ = rte
    st = _store(data, np.arange(4))
    st.save(tmp_path)
    meta = json.loads((tmp_path / "RTE.json").read_text())
    meta["ids"] = meta["ids"][:3]
    (tmp_path / "RTE.json").write_text(json.dumps(meta))
    with pytest.raises(SoftTargetError, match="4 rows but RTE.json lists 3 ids"):
        SoftTargets.load(tmp_path, "RTE")


def test_student_loss_uses_the_looked_up_targets():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    soft = torch.tensor([[0.7, 0.3], [0.2, 0.8]])
    logp = torch.log_softmax(logits, -1)
    hard = -logp[[0, 1], [0, 1]]
    softce = -(soft * logp).sum(-1)
    torch.testing.assert_close(kd_loss(spec_kind(), logits, labels, soft), 0.5 * hard + 0.5 * softce)


def spec_kind():
    return glue_tasks()["RTE"].head
