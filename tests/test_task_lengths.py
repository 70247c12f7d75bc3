"""Per-task and per-split `max_seq_len` (issue 14 item 2) and the trained length saved with the
model (issue 15): parsing and refusals, the length each split is tokenised at (training, dev,
the data identity), the encoder-position check over every length, and `predict` (Python and CLI)
cutting at each task's trained length unless told otherwise."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from conftest import NEG, NOUNS, POS, tiny_config
from mtkd.cli import main
from mtkd.config import load_config
from mtkd.errors import ConfigError
from mtkd.model import MTModel
from mtkd.task_data import TaskData
from mtkd.tasks import glue_tasks, load_task_specs, task_from_dict

BASE = {"head": "classification", "labels": ["neg", "pos"], "metrics": ["accuracy"],
        "fields": {"id": "id", "text_a": "text", "label": "label"}}


# ------------------------------------------------------------------------------ the task format
def test_max_seq_len_of_a_task_and_of_a_split_parse_and_round_trip():
    spec = task_from_dict("Reviews", {**BASE, "max_seq_len": 256,
                                      "splits": {"train": "r/train.tsv", "dev": {"path": "r/dev.tsv", "max_seq_len": 384}}})
    assert spec.max_seq_len == 256 and spec.splits["dev"].max_seq_len == 384 and spec.splits["train"].max_seq_len is None
    assert spec.max_len_for("dev", 128) == 384  # the split's
    assert spec.max_len_for("train", 128) == 256  # else the task's
    assert spec.model_copy(update={"max_seq_len": None}).max_len_for("train", 128) == 128  # else data.max_seq_len
    d = spec.to_dict()
    assert d["max_seq_len"] == 256 and d["splits"]["dev"]["max_seq_len"] == 384 and "max_seq_len" not in d["splits"]["train"]
    assert task_from_dict("Reviews", yaml.safe_load(yaml.safe_dump(d))) == spec
    assert "max_seq_len" not in glue_tasks()["SST-2"].to_dict()  # GLUE tasks: data.max_seq_len


@pytest.mark.parametrize("where, value, message", [
    ("task", 7, r"task 'Reviews', field 'max_seq_len': expected an integer >= 8 \(tokens\), got 7"),
    ("task", "long", r"task 'Reviews', field 'max_seq_len': expected an integer >= 8 \(tokens\), got 'long'"),
    ("task", True, r"task 'Reviews', field 'max_seq_len': expected an integer >= 8 \(tokens\), got True"),
    ("split", 64.5, r"task 'Reviews', split 'dev', field 'max_seq_len': expected an integer >= 8 \(tokens\), got 64.5"),
])
def test_bad_max_seq_len_is_refused_naming_task_split_and_field(where, value, message):
    d = {**BASE, "splits": {"train": "r/train.tsv", "dev": {"path": "r/dev.tsv"}}}
    if where == "task":
        d["max_seq_len"] = value
    else:
        d["splits"]["dev"]["max_seq_len"] = value
    with pytest.raises(ConfigError, match=message):
        task_from_dict("Reviews", d)


def test_a_glue_task_takes_a_length_through_the_config_override():
    specs = load_task_specs({"SST-2": {"max_seq_len": 64}, "MRPC": {"splits": {"dev": {"max_seq_len": 200}}}})
    assert specs["SST-2"].max_seq_len == 64 and specs["SST-2"].splits["train"].path == "SST-2/train.tsv"
    assert specs["MRPC"].max_seq_len is None and specs["MRPC"].splits["dev"].max_seq_len == 200


# ------------------------------------------------------------------------------ a run's lengths
def _review(rng, positive: bool, words: int) -> str:
    """A review of about `words` words whose label is learnable from one word."""
    filler = " ".join(rng.choice(NOUNS) + " " + rng.choice(["and", "with", "then", "or"]) for _ in range(words // 2))
    return f"the {rng.choice(NOUNS)} was {rng.choice(POS if positive else NEG)} , {filler} ."


def _write_reviews(root, n_train=24, n_dev=12, seed=0):
    """Reviews (long texts, 10-40 words) and Short (a few words), CSV with a header."""
    rng = random.Random(seed)
    for task, words in (("Reviews", (10, 40)), ("Short", (0, 2))):
        (root / task).mkdir(parents=True, exist_ok=True)
        for split, n in (("train", n_train), ("dev", n_dev)):
            rows = []
            for i in range(n):
                y = rng.random() < 0.5
                rows.append(f"{split}-{i},\"{_review(rng, y, rng.randint(*words))}\",{'pos' if y else 'neg'}\n")
            (root / task / f"{split}.csv").write_text("id,text,label\n" + "".join(rows))
    return root


def _tasks_file(path, reviews_extra=None):
    tasks = {t: {**BASE, "splits": {"train": {"path": f"{t}/train.csv"}, "dev": {"path": f"{t}/dev.csv"}}}
             for t in ("Reviews", "Short")}
    extra = dict(reviews_extra or {})
    for split, more in extra.pop("splits", {}).items():
        tasks["Reviews"]["splits"][split].update(more)
    tasks["Reviews"].update(extra)
    path.write_text(yaml.safe_dump(tasks))
    return path


def _config(tmp, tiny_encoder, reviews_extra=None, **data):
    root = _write_reviews(tmp / "data")
    raw = tiny_config(root, tiny_encoder, tmp / "cache", tasks=(), stages=["mtl"])
    raw["tasks_file"] = str(_tasks_file(tmp / "tasks.yaml", reviews_extra))
    raw["tasks"] = {"Reviews": {}, "Short": {}}
    raw["data"].update(max_seq_len=64, **data)
    path = tmp / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path, root


def _n_longer(tok, texts, n) -> int:
    return sum(len(ids) > n for ids in tok(texts)["input_ids"])


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_encoder):
    """MTL on Reviews cut at 16 tokens (task), its dev split at 48 (split), Short at 64 (data.max_seq_len)."""
    tmp = tmp_path_factory.mktemp("lengths")
    cfg, root = _config(tmp, tiny_encoder, {"max_seq_len": 16, "splits": {"dev": {"max_seq_len": 48}}})
    out = tmp / "out"
    assert main(["run", str(cfg), "--output-dir", str(out)]) == 0
    return SimpleNamespace(tmp=tmp, cfg=cfg, root=root, out=out, model=out / "seed-0" / "mtl" / "model")


def _csv_texts(path) -> list[str]:
    import csv

    return [r["text"] for r in csv.DictReader(path.open())]


def test_each_split_is_tokenised_at_its_own_length(trained):
    data = TaskData(load_config(trained.cfg))
    assert {(t, s): data.max_len(t, s) for t in ("Reviews", "Short") for s in ("train", "dev")} == {
        ("Reviews", "train"): 16, ("Reviews", "dev"): 48, ("Short", "train"): 64, ("Short", "dev"): 64}
    for (t, s), n in {("Reviews", "train"): 16, ("Reviews", "dev"): 48, ("Short", "train"): 64}.items():
        split = data.encoded(t, s)
        assert split.meta["max_len"] == n and int(split.lengths.max()) <= n
        assert data.data_identity(t, s)["max_len"] == n
    # the truncation counts of the data report, against the tokenizer run here
    tok = data.tokenizer()
    rep = json.loads((trained.out / "data_report.json").read_text())
    train, dev = _csv_texts(trained.root / "Reviews" / "train.csv"), _csv_texts(trained.root / "Reviews" / "dev.csv")
    assert rep["Reviews"]["train"]["truncated"] == _n_longer(tok, train, 16) == 24  # every review is longer than 16
    assert rep["Reviews"]["dev"]["truncated"] == _n_longer(tok, dev, 48) < _n_longer(tok, dev, 16)
    assert rep["Short"]["train"]["truncated"] == 0
    # the stage's identity holds each training split's length
    done = json.loads((trained.out / "seed-0" / "mtl" / "DONE.json").read_text())
    assert {t: v["max_len"] for t, v in done["identity"]["tasks"].items()} == {"Reviews": 16, "Short": 64}


def test_changing_one_tasks_length_changes_only_its_data_identity(trained):
    a = TaskData(load_config(trained.cfg))
    b = TaskData(load_config(trained.cfg, ["tasks.Reviews.max_seq_len=24"]))
    assert b.max_len("Reviews", "train") == 24 and b.max_len("Reviews", "dev") == 48  # the split's own stays
    assert a.data_identity("Reviews", "train") != b.data_identity("Reviews", "train")
    assert a.data_identity("Short", "train") == b.data_identity("Short", "train")


def test_the_saved_model_records_each_tasks_trained_length(trained):
    saved = json.loads((trained.model / "config.json").read_text())["tasks"]
    assert saved["Reviews"]["max_seq_len"] == 16 and saved["Reviews"]["splits"]["dev"]["max_seq_len"] == 48
    assert saved["Short"]["max_seq_len"] == 64  # data.max_seq_len, resolved when the run built its tasks
    model = MTModel.from_pretrained(trained.model)
    assert (model.train_max_len("Reviews"), model.train_max_len("Short")) == (16, 64)


def test_predict_cuts_at_the_trained_length_by_default(trained):
    model = MTModel.from_pretrained(trained.model)
    texts = _csv_texts(trained.root / "Reviews" / "dev.csv")
    default = model.predict("Reviews", texts, return_probs=True)
    np.testing.assert_array_equal(default, model.predict("Reviews", texts, max_len=16, return_probs=True))
    full = model.predict("Reviews", texts, max_len=512, return_probs=True)
    tok = model.tokenizer
    long_rows = [i for i, ids in enumerate(tok(texts)["input_ids"]) if len(ids) > 16]
    short_rows = [i for i in range(len(texts)) if i not in long_rows]
    assert long_rows and np.abs(default[long_rows] - full[long_rows]).max(1).min() > 1e-6  # every long text differs
    np.testing.assert_allclose(default[short_rows], full[short_rows], atol=1e-6)  # short ones do not


def test_tasks_of_different_lengths_are_served_per_length(trained):
    model = MTModel.from_pretrained(trained.model)
    texts = _csv_texts(trained.root / "Reviews" / "dev.csv")
    widths = []
    h = model.encoder.register_forward_hook(lambda mod, args, kw, out: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    try:
        both = model.predict(["Reviews", "Short"], texts, return_probs=True, batch_size=64)
    finally:
        h.remove()
    longest = max(len(ids) for ids in model.tokenizer(texts)["input_ids"])
    assert widths == [16, min(longest, 64)]  # one pass per length, each serving its own heads
    np.testing.assert_array_equal(both["Reviews"], model.predict("Reviews", texts, max_len=16, return_probs=True))
    np.testing.assert_array_equal(both["Short"], model.predict("Short", texts, max_len=64, return_probs=True))
    # an explicit max_len serves every task at that length, in one pass per batch
    widths.clear()
    h = model.encoder.register_forward_hook(lambda mod, args, kw, out: widths.append(kw["input_ids"].shape[1]), with_kwargs=True)
    try:
        model.predict(["Reviews", "Short"], texts, max_len=32, batch_size=64)
    finally:
        h.remove()
    assert widths == [32]


def test_cli_predict_uses_the_trained_length_unless_data_max_seq_len_is_given(trained, tmp_path, capsys):
    model = MTModel.from_pretrained(trained.model)
    texts = _csv_texts(trained.root / "Reviews" / "dev.csv")
    inp = tmp_path / "in.jsonl"
    inp.write_text("".join(json.dumps({"id": str(i), "text": t}) + "\n" for i, t in enumerate(texts)))

    def cli_probs(*extra):
        out = tmp_path / "o.jsonl"
        assert main(["predict", "--model", str(trained.model), "--task", "Reviews", "--input", str(inp),
                     "--output", str(out), "--probs", *extra]) == 0
        capsys.readouterr()
        return np.array([[r["probabilities"]["Reviews"][lab] for lab in ("neg", "pos")]
                         for r in map(json.loads, out.read_text().splitlines())])

    at16 = model.predict("Reviews", texts, max_len=16, return_probs=True)
    at32 = model.predict("Reviews", texts, max_len=32, return_probs=True)
    assert np.abs(at16 - at32).max() > 1e-3
    np.testing.assert_allclose(cli_probs(), at16, atol=2e-6)  # was 512 (data.max_seq_len's default)
    np.testing.assert_allclose(cli_probs("--set", "data.max_seq_len=32"), at32, atol=2e-6)
    cfg = tmp_path / "predict.yaml"
    cfg.write_text(yaml.safe_dump({"data": {"max_seq_len": 32}, "predict": {"batch_size": 4}}))
    np.testing.assert_allclose(cli_probs(str(cfg)), at32, atol=2e-6)
    cfg.write_text(yaml.safe_dump({"predict": {"batch_size": 4}}))  # a config without data.max_seq_len
    np.testing.assert_allclose(cli_probs(str(cfg)), at16, atol=2e-6)


def test_a_folder_saved_without_lengths_predicts_at_512_capped_at_the_encoders_positions(tiny_encoder, tmp_path):
    torch.manual_seed(0)
    model = MTModel.from_encoder(str(tiny_encoder), {"SST-2": glue_tasks()["SST-2"]})
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "max_seq_len" not in saved["tasks"]["SST-2"]
    loaded = MTModel.from_pretrained(tmp_path / "m")
    assert loaded.train_max_len("SST-2") == 512
    text = ["the film was good " * 60]  # 242 tokens; the tiny encoder has 128 positions
    np.testing.assert_array_equal(loaded.predict("SST-2", text, return_probs=True),
                                  loaded.predict("SST-2", text, max_len=128, return_probs=True))


def test_a_length_beyond_the_encoders_positions_is_refused_naming_the_key(tmp_path, tiny_encoder, capsys):
    cfg, _ = _config(tmp_path / "a", tiny_encoder, {"max_seq_len": 200})
    assert main(["run", str(cfg), "--output-dir", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "tasks.Reviews.max_seq_len is 200, but the encoder (bert) takes at most 128 tokens" in err
    assert "set tasks.Reviews.max_seq_len <= 128" in err
    cfg, _ = _config(tmp_path / "b", tiny_encoder, {"splits": {"dev": {"max_seq_len": 300}}})
    assert main(["run", str(cfg), "--output-dir", str(tmp_path / "out")]) == 2
    assert "tasks.Reviews.splits.dev.max_seq_len is 300" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()  # refused before anything was written
