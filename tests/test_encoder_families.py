"""Any Hugging Face encoder family: BERT, RoBERTa, DistilBERT, ELECTRA, DeBERTa-v2 and ModernBERT,
each a tiny random encoder with its own tokenizer (mtkd.testing), get the candidates' dropout in
every dropout module, first-token ([CLS] / <s>) pooling, their own pad id and token-type handling,
mtkd.dropout's cheap masks (the SDPA twin where the attention allows it), and run MTL, teachers,
the student and predict end to end."""

from __future__ import annotations

import copy
import gc
import json

import pytest
import torch
import transformers
import yaml
from packaging.version import Version

from conftest import tiny_config, write_glue_fixture
from mtkd.cli import main
from mtkd.data import collate, encode_split
from mtkd.dropout import ATTENTION_NAME, FastDropout, use_fast_dropout
from mtkd.errors import ConfigError
from mtkd.encoders import check_encoder_dropout, check_first_token_pooling, encoder_dropout_rates, set_encoder_dropout
from mtkd.model import MTModel
from mtkd.tasks import glue_tasks
from mtkd.testing import FAMILIES, save_tiny_family_encoder, tiny_tokenizer

SPECS = {n: glue_tasks()[n] for n in ("SST-2", "MRPC")}
TOKEN_TYPES = {"bert", "electra"}  # type_vocab_size 2; RoBERTa 1, DeBERTa-v2 0, DistilBERT/ModernBERT none
# SDPA dispatched through AttentionInterface: BERT, RoBERTa, DistilBERT, ELECTRA since transformers 5.0,
# ModernBERT since 5.7 (before, it keeps PyTorch's SDPA); DeBERTa-v2 has its own (eager) attention
TWIN = {"bert", "roberta", "distilbert", "electra"} | (
    {"modernbert"} if Version(transformers.__version__) >= Version("5.7") else set())
PAD_IDS = {"bert": 0, "distilbert": 0, "electra": 0, "deberta-v2": 0, "roberta": 1, "modernbert": 403}
# dropout modules per family: embeddings + per layer attention probabilities, attention output, FFN output
# (DistilBERT has no attention-output dropout, DeBERTa-v2 also drops its relative-position embeddings,
# ModernBERT keeps its attention-probability rate as a number, `attention_dropout`)
N_MODULES = {"bert": 7, "roberta": 7, "electra": 7, "distilbert": 5, "deberta-v2": 9, "modernbert": 5}


@pytest.fixture(scope="module", autouse=True)
def _cheap_full_collections():
    """Each training run ends with accelerate's free_memory(), a full gc.collect() that walks every
    object transformers and torch created (~0.5 s here, nine runs per pipeline). Frozen, the objects
    alive now are skipped; whatever the tests create is still collected."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, tmp_path_factory):
    return request.param, save_tiny_family_encoder(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def glue(tmp_path_factory):
    return write_glue_fixture(tmp_path_factory.mktemp("glue"), n_train=16, n_dev=8, n_test=6)


def _batch(tok, texts=("the film was good .", "a"), pairs=("he said the cat sat .", "b")):
    enc = tok(list(texts), list(pairs), padding=True, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"], enc.get("token_type_ids")


def test_candidate_dropout_reaches_every_dropout_module_and_survives_save_load(family, tmp_path):
    name, folder = family
    model = MTModel.from_encoder(str(folder), SPECS, dropout=0.3)
    rates = encoder_dropout_rates(model.encoder)  # modules and numeric attention rates
    assert set(rates.values()) == {0.3}, rates
    assert not any(type(m) is torch.nn.Dropout for m in model.encoder.modules())  # all FastDropout, same p
    assert [m.p for m in model.encoder.modules() if isinstance(m, FastDropout)] == [0.3] * N_MODULES[name]
    if name == "modernbert":
        assert [m.attention_dropout for m in model.encoder.modules() if hasattr(m, "Wqkv")] == [0.3, 0.3]
    model.save_pretrained(tmp_path / "m")
    loaded = MTModel.from_pretrained(tmp_path / "m", tasks=SPECS)
    assert encoder_dropout_rates(loaded.encoder) == rates
    assert set(encoder_dropout_rates(MTModel.from_encoder(str(folder), SPECS, dropout=0.1).encoder).values()) == {0.1}


def test_first_token_pooling_token_types_and_pad_id(family):
    name, folder = family
    model = MTModel.from_encoder(str(folder), SPECS).eval()
    tok = model.tokenizer
    assert tok.pad_token_id == PAD_IDS[name]
    ids, mask, types = _batch(tok)
    assert set(ids[:, 0].tolist()) == {tok.cls_token_id}  # [CLS] / <s> first: what encode() pools
    assert model.use_token_types == (name in TOKEN_TYPES)
    assert (types is not None) == (name in TOKEN_TYPES)  # the family's tokenizer returns them or not
    with torch.no_grad():
        hidden = model.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        if name in TOKEN_TYPES:  # segment B's type ids reach the encoder
            cls_vec = model.encode(ids, mask, types)
            assert not torch.allclose(cls_vec, model.encode(ids, mask, torch.zeros_like(ids)))
        else:  # collate's type ids are ignored: RoBERTa embeds one type, the others none
            cls_vec = model.encode(ids, mask, torch.ones_like(ids))
            assert torch.allclose(cls_vec, hidden[:, 0])
    assert cls_vec.shape == (2, 32)


def test_cached_batches_are_padded_with_the_tokenizers_pad_id(family, tmp_path):
    name, folder = family
    tok = MTModel.from_encoder(str(folder), SPECS).tokenizer
    (tmp_path / "SST-2").mkdir()
    (tmp_path / "SST-2" / "train.tsv").write_text("sentence\tlabel\nthe film was good and the cast was great .\t1\na\t0\n")
    data = encode_split(SPECS["SST-2"], "train", tok, 32, tmp_path / "cache", root=tmp_path)
    assert data.meta["pad_id"] == PAD_IDS[name]
    b = collate(data, [0, 1])  # the short second example gets padding
    pads = b["input_ids"][b["attention_mask"] == 0]
    assert len(pads) > 0 and set(pads.tolist()) == {PAD_IDS[name]}
    assert b["input_ids"][:, 0].tolist() == [tok.cls_token_id] * 2
    assert set(collate(data, [0, 1], pad_id=7)["input_ids"][b["attention_mask"] == 0].tolist()) == {7}


def test_fast_dropout_keeps_rates_and_the_attention_masks(family, monkeypatch):
    """With p ~ 0 (masks keep everything) the fast path in training gives the plain SDPA/eager
    encoder's eval output: padding and ModernBERT's sliding window are masked as before. Families
    with the twin never fall back to PyTorch's attention in training; DeBERTa-v2 keeps its own."""
    import transformers.integrations.sdpa_attention as sdpa
    from transformers import AutoConfig, AutoModel

    name, folder = family
    cfg = AutoConfig.from_pretrained(folder)
    set_encoder_dropout(cfg, 1e-7)
    torch.manual_seed(0)
    plain = AutoModel.from_pretrained(folder, config=cfg).eval()
    fast = use_fast_dropout(copy.deepcopy(plain)).train()
    assert fast.config._attn_implementation == (ATTENTION_NAME if name in TWIN else plain.config._attn_implementation)
    assert not any(type(m) is torch.nn.Dropout for m in fast.modules())
    assert set(encoder_dropout_rates(fast).values()) == {1e-7}
    tok = tiny_tokenizer(name)
    long = "the film was good and the plot was great but the cast was dull and the story poor ."
    ids, mask, _ = _batch(tok, (long, "a"), ("he said the cat sat .", "b"))
    assert ids.shape[1] > 2 * 8  # longer than ModernBERT's tiny sliding window
    fallbacks = []
    real = sdpa.sdpa_attention_forward

    def counted(module, *args, **kwargs):
        fallbacks.append(module.training)
        return real(module, *args, **kwargs)

    monkeypatch.setattr(sdpa, "sdpa_attention_forward", counted)
    out = fast(input_ids=ids, attention_mask=mask).last_hidden_state
    if name in TWIN:
        assert True not in fallbacks  # the twin ran in every layer
    with torch.no_grad():
        ref = plain(input_ids=ids, attention_mask=mask).last_hidden_state
    keep = mask.bool()
    assert torch.allclose(out[keep], ref[keep], atol=1e-5)
    # real dropout trains: finite gradients, and masks differ between steps
    for m in fast.modules():
        if isinstance(m, FastDropout):
            m.p = 0.3
        if isinstance(m.__dict__.get("attention_dropout"), float):
            m.attention_dropout = 0.3
    torch.manual_seed(1)
    a = fast(input_ids=ids, attention_mask=mask).last_hidden_state
    a[keep].sum().backward()
    assert not torch.allclose(a[keep], out[keep], atol=1e-3)
    assert all(torch.isfinite(p.grad).all() for p in fast.parameters() if p.grad is not None)


def test_dropout_that_cannot_be_set_is_refused():
    from transformers import BertConfig, BertModel, GPT2Config

    with pytest.raises(ConfigError, match=r"'gpt2' encoder.*attn_pdrop.*ENCODER_DROPOUT_FIELDS"):
        set_encoder_dropout(GPT2Config(), 0.2)
    bert = BertModel(BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=64), add_pooling_layer=False)
    bert.encoder.layer[0].output.dropout.p = 0.2  # one module the config did not reach
    wrong = r"dropout 0.1 did not reach.*1 of \d+ dropout rates differ: encoder.layer.0.output.dropout=0.2"
    with pytest.raises(ConfigError, match=wrong):
        check_encoder_dropout(bert, 0.1, "encoder 'x'")


def test_a_tokenizer_without_a_first_cls_token_is_refused():
    tok = tiny_tokenizer("bert")
    tok.backend_tokenizer.post_processor = None  # no [CLS] added: the first token is a word
    with pytest.raises(ConfigError, match="does not start inputs with a"):
        check_first_token_pooling(tok, "encoder 'x'")


def test_mtl_teachers_student_and_predict(family, glue, tmp_path):
    name, folder = family
    cfg = tiny_config(glue, folder, tmp_path / "cache", tasks=("SST-2", "MRPC"))
    cfg["stages"] = ["mtl", "finetune", "teach", "distill"]
    cfg["kd"] = {"teacher_tasks": ["MRPC"], "select_by": ["MRPC"],
                 "candidates": [{"dropout": 0.1}, {"dropout": 0.3}], "top_k": 1}
    path = tmp_path / "kd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main(["run", str(path), "--output-dir", str(out)]) == 0
    teach = json.loads((out / "seed-0" / "teach" / "DONE.json").read_text())
    assert len(teach["members"]) == 1 and len(teach["selection_scores"]) == 2
    for i, p in enumerate((0.1, 0.3)):  # the saved candidates rebuild with their own rate
        cand = MTModel.from_pretrained(out / "seed-0" / "teach" / f"candidate-{i}" / "mtl" / "model")
        assert set(encoder_dropout_rates(cand.encoder).values()) == {p}
    member = teach["members"][0]
    teacher = MTModel.from_pretrained(out / "seed-0" / "teach" / f"candidate-{member}" / "finetune" / "MRPC" / "model")
    assert set(encoder_dropout_rates(teacher.encoder).values()) == {(0.1, 0.3)[member]}
    res = json.loads((out / "results.json").read_text())
    assert set(res["systems"]["mtdnn_kd"]) == {"SST-2", "MRPC"} and set(res["systems"]["ensemble"]) == {"MRPC"}
    student = MTModel.from_pretrained(out / "seed-0" / "distill" / "mtl" / "model")
    texts = ["the film was good .", "a dull and overlong story", "he said the cat sat ."]
    assert [y in ("0", "1") for y in student.predict("SST-2", texts)] == [True] * 3
    assert [y in ("0", "1") for y in student.predict("MRPC", texts, texts[::-1])] == [True] * 3
