"""MTModel: heads per task (AX shares MNLI's), forward shapes, save/load round trip, predict(),
checkpoint/task mismatches, encoder overrides."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from conftest import TRAINED_TASKS
from mtkd.errors import CheckpointError
from mtkd.model import MTModel
from mtkd.tasks import glue_tasks

ALL = glue_tasks()
NAMES = TRAINED_TASKS  # the shared trained model's tasks (conftest): SST-2, STS-B, MRPC, MNLI, AX on MNLI's head
TEXTS = ["the film was good .", "the plot was awful .", "a lovely cast", "the show was dull and the story poor ."]
PAIRS = ["the movie is fine", "it was bad", "the cast is great", "nothing happened"]


def specs(names=NAMES):
    return {n: ALL[n] for n in names}


@pytest.fixture(scope="module")
def model(trained_model):
    return trained_model


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    folder = tmp_path_factory.mktemp("mt-model") / "model"
    model.save_pretrained(folder)
    return folder


def batch(model, texts=TEXTS, pairs=PAIRS):
    enc = model.tokenizer(list(texts), list(pairs), padding=True, truncation=True, max_length=64, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]


def test_one_head_per_task_ax_uses_mnli(model):
    assert set(model.heads) == {"SST-2", "STS-B", "MRPC", "MNLI"}
    assert model.tasks["AX"].head_name == "MNLI"
    assert model.heads["MNLI"].dropout.p == 0.3 and model.heads["SST-2"].dropout.p == 0.05
    assert model.heads["MNLI"].out.in_features == 64  # tiny encoder's hidden size


def test_forward_shapes(model):
    ids, mask, types = batch(model)
    with torch.no_grad():
        assert model(ids, mask, types, task="SST-2").shape == (4, 2)
        assert model(ids, mask, types, task="STS-B").shape == (4, 1)
        mnli = model(ids, mask, types, task="MNLI")
        ax = model(ids, mask, types, task="AX")
    assert mnli.shape == ax.shape == (4, 3)
    assert torch.equal(mnli, ax)


def test_pretrained_init_loads_encoder_weights(tiny_encoder):
    from transformers import AutoModel

    model = MTModel.from_encoder(str(tiny_encoder), specs(), init="pretrained")  # a fresh one, not the trained model
    ref = AutoModel.from_pretrained(str(tiny_encoder), add_pooling_layer=False)
    ref_state = ref.state_dict()
    state = model.encoder.state_dict()
    assert set(ref_state) == set(state)
    for k, v in ref_state.items():
        assert torch.equal(v, state[k]), k


def test_save_pretrained_writes_files(saved, model):
    names = {p.name for p in saved.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(n.endswith(".tmp") for n in names)
    cfg = json.loads((saved / "config.json").read_text())
    assert cfg["format"] == "mtkd"
    assert list(cfg["tasks"]) == list(NAMES)
    assert cfg["tasks"]["AX"]["head_of"] == "MNLI"
    assert cfg["encoder_config"]["num_hidden_layers"] == 2 and cfg["encoder_config"]["hidden_size"] == 64
    from safetensors.torch import load_file

    weights = load_file(str(saved / "model.safetensors"))
    assert set(weights) == set(model.state_dict())
    assert not any(k.startswith("heads.AX") for k in weights)


def test_from_pretrained_gives_identical_logits_and_predictions(model, saved):
    loaded = MTModel.from_pretrained(saved).eval()
    assert set(loaded.tasks) == set(NAMES) and set(loaded.heads) == set(model.heads)
    ids, mask, types = batch(model)
    with torch.no_grad():
        for t in NAMES:
            a, b = model(ids, mask, types, task=t), loaded(ids, mask, types, task=t)
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert loaded.predict(list(NAMES), TEXTS, PAIRS) == model.predict(list(NAMES), TEXTS, PAIRS)
    assert loaded.tokenizer(TEXTS)["input_ids"] == model.tokenizer(TEXTS)["input_ids"]


def test_from_pretrained_with_matching_tasks(saved):
    loaded = MTModel.from_pretrained(saved, tasks=specs(("SST-2", "STS-B", "MNLI", "AX")))
    assert set(loaded.heads) == {"SST-2", "STS-B", "MNLI"}


def test_predict_single_task_returns_label_names(model):
    out = model.predict("SST-2", TEXTS)
    assert isinstance(out, list) and len(out) == len(TEXTS)
    assert set(out) <= {"0", "1"}
    mnli = model.predict("MNLI", TEXTS, PAIRS)
    assert len(mnli) == 4 and set(mnli) <= {"contradiction", "entailment", "neutral"}
    # agrees with argmax of forward()
    ids, mask, types = batch(model)
    with torch.no_grad():
        arg = model(ids, mask, types, task="MNLI").argmax(-1).tolist()
    assert mnli == [ALL["MNLI"].labels[i] for i in arg]


def test_predict_return_probs(model):
    p = model.predict("MNLI", TEXTS, PAIRS, return_probs=True)
    assert isinstance(p, np.ndarray) and p.shape == (4, 3)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-6)
    ids, mask, types = batch(model)
    with torch.no_grad():
        ref = torch.softmax(model(ids, mask, types, task="MNLI"), -1).numpy()
    np.testing.assert_allclose(p, ref, atol=1e-5)


def test_predict_regression_clipped_to_label_range(model):
    m = copy.deepcopy(model)
    raw = m.predict("STS-B", TEXTS, PAIRS)
    assert all(isinstance(v, float) for v in raw) and len(raw) == 4
    with torch.no_grad():
        m.heads["STS-B"].out.bias.fill_(100.0)
    assert m.predict("STS-B", TEXTS, PAIRS) == [5.0] * 4
    with torch.no_grad():
        m.heads["STS-B"].out.bias.fill_(-100.0)
    assert m.predict("STS-B", TEXTS, PAIRS) == [0.0] * 4


def test_predict_several_tasks_one_encoder_pass(model):
    calls = []
    h = model.encoder.register_forward_hook(lambda mod, args, out: calls.append(1))
    try:
        out = model.predict(["SST-2", "STS-B", "MNLI", "AX"], TEXTS, PAIRS)
        assert len(calls) == 1
        calls.clear()
        out_small = model.predict(["SST-2", "STS-B", "MNLI", "AX"], TEXTS, PAIRS, batch_size=3)
        assert len(calls) == 2  # ceil(4 / 3) batches, each serving every head
    finally:
        h.remove()
    assert set(out) == {"SST-2", "STS-B", "MNLI", "AX"}
    assert all(len(v) == 4 for v in out.values())
    assert out["AX"] == out["MNLI"]
    assert out["SST-2"] == model.predict("SST-2", TEXTS, PAIRS)
    np.testing.assert_allclose(out["STS-B"], model.predict("STS-B", TEXTS, PAIRS), atol=1e-6)
    assert out_small["MNLI"] == out["MNLI"]
    np.testing.assert_allclose(out_small["STS-B"], out["STS-B"], atol=1e-5)


def test_predict_restores_training_mode_and_unknown_task(model):
    model.train()
    try:
        model.predict("SST-2", TEXTS[:2])
        assert model.training
    finally:
        model.eval()
    with pytest.raises(KeyError, match="CoLA"):
        model.predict("CoLA", TEXTS)


def test_predict_refuses_one_string_and_a_pair_task_without_pairs(model):
    with pytest.raises(TypeError, match="not one string"):
        model.predict("SST-2", "a single string")
    with pytest.raises(ValueError, match="task 'STS-B' reads sentence pairs: give text_pairs"):
        model.predict("STS-B", TEXTS[:2])
    with pytest.raises(ValueError, match="'STS-B'"):
        model.predict(["SST-2", "STS-B"], TEXTS[:2])
    assert len(model.predict("STS-B", TEXTS[:2], TEXTS[:2])) == 2


def test_from_pretrained_other_task_set_raises(saved):
    with pytest.raises(CheckpointError, match="CoLA"):
        MTModel.from_pretrained(saved, tasks=specs(("SST-2", "CoLA")))


def test_from_pretrained_other_labels_raises(saved):
    other = specs(("SST-2", "STS-B", "MNLI"))
    other["SST-2"] = other["SST-2"].model_copy(update={"labels": ("negative", "positive")})
    with pytest.raises(CheckpointError, match="SST-2"):
        MTModel.from_pretrained(saved, tasks=other)


def test_from_pretrained_other_head_kind_raises(saved):
    other = specs(("SST-2", "STS-B"))
    other["STS-B"] = ALL["MRPC"].model_copy(update={"name": "STS-B"})  # classification where regression was saved
    with pytest.raises(CheckpointError, match="STS-B"):
        MTModel.from_pretrained(saved, tasks=other)


def test_from_pretrained_incomplete_folders_raise(saved, tmp_path):
    with pytest.raises(CheckpointError, match="config.json"):
        MTModel.from_pretrained(tmp_path)
    only_weights = tmp_path / "w"
    only_weights.mkdir()
    (only_weights / "model.safetensors").write_bytes((saved / "model.safetensors").read_bytes())
    with pytest.raises(CheckpointError):
        MTModel.from_pretrained(only_weights)
    wrong = tmp_path / "hf"
    wrong.mkdir()
    (wrong / "model.safetensors").write_bytes(b"x")
    (wrong / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(CheckpointError, match="format"):
        MTModel.from_pretrained(wrong)


def test_num_hidden_layers_and_dropout_overrides(tiny_encoder, tmp_path):
    m = MTModel.from_encoder(str(tiny_encoder), specs(("SST-2",)), num_hidden_layers=1, dropout=0.3)
    assert m.encoder.config.num_hidden_layers == 1
    assert len(m.encoder.encoder.layer) == 1
    assert m.encoder.config.hidden_dropout_prob == 0.3
    assert m.encoder.config.attention_probs_dropout_prob == 0.3
    assert m.encoder.embeddings.dropout.p == 0.3
    # the kept layer is the pretrained first layer
    from transformers import AutoModel

    ref = AutoModel.from_pretrained(str(tiny_encoder), add_pooling_layer=False)
    for (k, v), (k2, v2) in zip(
        m.encoder.encoder.layer[0].state_dict().items(), ref.encoder.layer[0].state_dict().items(), strict=True
    ):
        assert k == k2 and torch.equal(v, v2)
    # and it survives a save/load round trip
    m.save_pretrained(tmp_path / "small")
    back = MTModel.from_pretrained(tmp_path / "small")
    assert len(back.encoder.encoder.layer) == 1
    assert back.encoder.config.hidden_dropout_prob == 0.3


def test_random_init_differs_from_pretrained(tiny_encoder):
    model = MTModel.from_encoder(str(tiny_encoder), specs(("SST-2",)), init="pretrained")  # fresh, not trained
    torch.manual_seed(1)
    r = MTModel.from_encoder(str(tiny_encoder), specs(("SST-2",)), init="random")
    a = r.encoder.encoder.layer[0].attention.self.query.weight
    b = model.encoder.encoder.layer[0].attention.self.query.weight
    assert a.shape == b.shape and not torch.equal(a, b)
