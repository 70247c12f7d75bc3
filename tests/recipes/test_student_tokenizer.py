"""A student of another family with its own vocabulary (kd.student): teachers on the tiny BERT
(MiniLM's WordPiece vocabulary), the student a tiny RoBERTa with its own byte-level BPE. The
student must train on its own token ids (soft targets stay aligned by example id), and be scored
and served with its own tokenizer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

import mtkd.loop
from conftest import tiny_config
from mtkd.cli import main
from mtkd.data import read_split
from mtkd.model import MTModel
from mtkd.tasks import load_task_specs
from mtkd.testing import save_tiny_family_encoder

pytestmark = pytest.mark.integration  # a KD run with its own student tokenizer


@pytest.fixture(scope="module")
def student_encoder(tmp_path_factory):
    return save_tiny_family_encoder(tmp_path_factory.mktemp("roberta") / "enc", "roberta", max_len=64)


def test_student_with_its_own_tokenizer_trains_and_is_scored_on_its_own_ids(
    glue_root, tiny_encoder, student_encoder, tmp_path, monkeypatch
):
    cfg = tiny_config(glue_root, tiny_encoder, tmp_path / "cache", tasks=("SST-2", "RTE"))
    cfg["stages"] = ["teach", "distill"]
    cfg["kd"] = {
        "teacher_tasks": ["RTE"],
        "select_by": ["RTE"],
        "candidates": [{"dropout": 0.1}],
        "top_k": 1,
        "student": {"name": str(student_encoder)},
    }
    path = tmp_path / "kd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    seen = []  # (task, indices, input_ids, attention_mask, tokenizer) of every training batch
    real_collate = mtkd.loop.collate

    def collate(data, idx, **kw):
        batch = real_collate(data, idx, **kw)
        if data.split == "train":  # (inference batches go through collate too)
            seen.append(
                (
                    data.task,
                    np.asarray(idx),
                    batch["input_ids"],
                    batch["attention_mask"],
                    data.meta["tokenizer_fingerprint"],
                )
            )
        return batch

    monkeypatch.setattr(mtkd.loop, "collate", collate)
    out = tmp_path / "out"
    assert main(["run", str(path), "--output-dir", str(out)]) == 0

    student = MTModel.from_pretrained(out / "seed-0" / "distill" / "finetune" / "RTE" / "model")
    teacher = MTModel.from_pretrained(out / "seed-0" / "teach" / "candidate-0" / "mtl" / "model")
    assert student.tokenizer.get_vocab() != teacher.tokenizer.get_vocab()
    from mtkd.data import tokenizer_fingerprint

    student_fp = tokenizer_fingerprint(student.tokenizer)
    student_batches = [b for b in seen if b[4] == student_fp]
    assert student_batches and len(student_batches) < len(seen)  # the teachers trained on theirs
    raw = {t: read_split(spec, "train", glue_root) for t, spec in load_task_specs({"SST-2": {}, "RTE": {}}).items()}

    def assert_decodes(batches, tokenizer):
        for task, idx, ids, mask, _ in batches:
            for row, i in enumerate(idx):
                text = tokenizer.decode(ids[row][mask[row].bool()], skip_special_tokens=True)
                want = raw[task].text_a[i] + (raw[task].text_b[i] if raw[task].text_b else "")
                assert text.replace(" ", "").lower() == want.replace(" ", "").lower(), (task, text, want)

    assert_decodes(student_batches, student.tokenizer)

    # `mtkd evaluate` on the student's model equals MTModel.predict on the dev texts
    model_dir = out / "seed-0" / "distill" / "finetune" / "RTE" / "model"
    ev = tmp_path / "ev"
    assert main(["evaluate", str(path), "--model", str(model_dir), "--output-dir", str(ev)]) == 0
    got = json.loads((ev / "metrics.json").read_text())["RTE"]["accuracy"]
    dev = read_split(load_task_specs({"RTE": {}})["RTE"], "dev", glue_root)
    preds = student.predict("RTE", dev.text_a, dev.text_b)
    labels = ["entailment", "not_entailment"]
    expected = 100 * float(np.mean([labels.index(p) == y for p, y in zip(preds, dev.labels, strict=True)]))
    assert abs(got - expected) < 1e-6, (got, expected)

    # the same output folder with a student of the teachers' family: the student is trained again on
    # the new tokenizer's ids (nothing of the old vocabulary is reused); the teachers are kept
    teacher_weights = (
        (out / "seed-0" / "teach" / "candidate-0" / "mtl" / "model" / "model.safetensors").stat().st_mtime_ns
    )
    seen.clear()
    assert main(["run", str(path), "--output-dir", str(out), "--set", f"kd.student.name={tiny_encoder}"]) == 0
    assert (
        out / "seed-0" / "teach" / "candidate-0" / "mtl" / "model" / "model.safetensors"
    ).stat().st_mtime_ns == teacher_weights
    new_student = MTModel.from_pretrained(out / "seed-0" / "distill" / "finetune" / "RTE" / "model")
    assert new_student.tokenizer.get_vocab() == teacher.tokenizer.get_vocab()
    assert seen and {b[4] for b in seen} == {tokenizer_fingerprint(new_student.tokenizer)}
    assert_decodes(seen, new_student.tokenizer)
