"""Shared fixtures: a tiny randomly initialised BERT with the default encoder's tokenizer, a small
GLUE-like data root reproducing the real files' quirks (CoLA without header, MRPC's BOM, STS-B's
many columns, JSON samples, test files without labels), and one tiny model trained on them once per
session (trained_model_dir, trained_model, trained_model_copy)."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# One intra-op thread for the whole session, as the subprocess tests (OMP_NUM_THREADS=1) and
# test_loop_resume's reference run already use: no test then runs under a thread count set by
# whichever test ran before it, and the tiny models are faster on one thread where other
# processes share the cores.
torch.set_num_threads(1)

POS = ["good", "great", "fine", "lovely", "superb"]
NEG = ["bad", "awful", "poor", "dull", "terrible"]
NOUNS = ["film", "movie", "plot", "cast", "story", "show"]

# ------------------------------------------------------------------------- unit / integration
# A unit test runs in well under UNIT_BUDGET_S; what takes longer (or runs a pipeline, torchrun, a
# resume, an ONNX export, a server or a benchmark) carries @pytest.mark.integration, so that
# `make test-unit` stays quick. Unmarked tests over budget are listed after the run (not failed: a
# busy machine slows everything down).
UNIT_BUDGET_S = 2.0
_over_budget: list[tuple[float, str]] = []


def pytest_runtest_logreport(report):
    if report.when == "call" and report.duration > UNIT_BUDGET_S and "integration" not in report.keywords:
        _over_budget.append((report.duration, report.nodeid))


def pytest_terminal_summary(terminalreporter):
    if _over_budget:
        terminalreporter.section(f"unmarked tests over {UNIT_BUDGET_S:g} s: mark them integration or speed them up")
        for duration, nodeid in sorted(_over_budget, reverse=True):
            terminalreporter.write_line(f"{duration:6.2f}s {nodeid}")


@pytest.fixture(scope="session")
def tiny_encoder(tmp_path_factory) -> Path:
    """A tiny random BERT with the bundled MiniLM tokenizer (so tokenisation is the real one)."""
    from mtkd.testing import save_tiny_encoder

    return save_tiny_encoder(tmp_path_factory.mktemp("tiny-bert"), max_positions=128)


def _sentence(rng, positive: bool) -> str:
    return f"the {rng.choice(NOUNS)} was {rng.choice(POS if positive else NEG)} ."


def write_glue_fixture(root: Path, n_train: int = 48, n_dev: int = 16, n_test: int = 12, seed: int = 0) -> Path:
    """Small files in the official GLUE layouts; the label is learnable from one word."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)

    def rows(n):
        return [(i, rng.random() < 0.5) for i in range(n)]

    # CoLA: no header in train/dev: source, label, original label, sentence; test has a header
    (root / "CoLA").mkdir(exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        (root / "CoLA" / f"{split}.tsv").write_text(
            "".join(f"gj04\t{int(y)}\t\t{_sentence(rng, y)}\n" for _, y in rows(n))
        )
    (root / "CoLA" / "test.tsv").write_text(
        "index\tsentence\n" + "".join(f"{i}\t{_sentence(rng, y)}\n" for i, y in rows(n_test))
    )
    # SST-2
    (root / "SST-2").mkdir(exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        (root / "SST-2" / f"{split}.tsv").write_text(
            "sentence\tlabel\n" + "".join(f"{_sentence(rng, y)} \t{int(y)}\n" for _, y in rows(n))
        )
    (root / "SST-2" / "test.tsv").write_text(
        "index\tsentence\n" + "".join(f"{i}\t{_sentence(rng, y)}\n" for i, y in rows(n_test))
    )
    # MRPC: header with a UTF-8 BOM, quotes inside text (no quoting in GLUE TSVs)
    (root / "MRPC").mkdir(exist_ok=True)
    for split, n in (("train", n_train), ("dev", n_dev)):
        body = "".join(
            f'{int(y)}\t{100 + i}\t{200 + i}\tHe said " {_sentence(rng, y)}\t{_sentence(rng, y)}\n' for i, y in rows(n)
        )
        (root / "MRPC" / f"{split}.tsv").write_text(
            "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n" + body, encoding="utf-8"
        )
    (root / "MRPC" / "test.tsv").write_text(
        "index\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
        + "".join(f"{i}\t{i}\t{i}\t{_sentence(rng, y)}\t{_sentence(rng, y)}\n" for i, y in rows(n_test))
    )
    # STS-B: ten columns, score in [0, 5]
    (root / "STS-B").mkdir(exist_ok=True)
    head = "index\tgenre\tfilename\tyear\told_index\tsource1\tsource2\tsentence1\tsentence2"
    for split, n in (("train", n_train), ("dev", n_dev)):
        body = "".join(
            f"{i}\tmain\tf\t2012\t{i:04d}\tnone\tnone\t{_sentence(rng, y)}\t{_sentence(rng, y)}"
            f"\t{4.5 if y else 0.5:.3f}\n"
            for i, y in rows(n)
        )
        (root / "STS-B" / f"{split}.tsv").write_text(head + "\tscore\n" + body)
    (root / "STS-B" / "test.tsv").write_text(
        head
        + "\n"
        + "".join(
            f"{i}\tmain\tf\t2012\t{i:04d}\tnone\tnone\t{_sentence(rng, y)}\t{_sentence(rng, y)}\n"
            for i, y in rows(n_test)
        )
    )
    # RTE / WNLI / QNLI: index, two texts, label names
    for task, labels, a, b in (
        ("RTE", ("entailment", "not_entailment"), "sentence1", "sentence2"),
        ("QNLI", ("entailment", "not_entailment"), "question", "sentence"),
        ("WNLI", ("1", "0"), "sentence1", "sentence2"),
    ):
        (root / task).mkdir(exist_ok=True)
        for split, n in (("train", n_train), ("dev", n_dev)):
            (root / task / f"{split}.tsv").write_text(
                f"index\t{a}\t{b}\tlabel\n"
                + "".join(
                    f"{i}\tsome premise {i}\t{_sentence(rng, y)}\t{labels[0] if y else labels[1]}\n" for i, y in rows(n)
                )
            )
        (root / task / "test.tsv").write_text(
            f"index\t{a}\t{b}\n" + "".join(f"{i}\tsome premise {i}\t{_sentence(rng, y)}\n" for i, y in rows(n_test))
        )
    # MNLI / QQP: the JSON samples used here ({"0": {"text_a", "text_b", "label"}})
    for task, labels in (("MNLI", ("entailment", "contradiction", "neutral")), ("QQP", ("1", "0"))):
        d = root / task / "partial" / "powerfulpromptft_sample"
        d.mkdir(parents=True, exist_ok=True)
        for split, n in (("train", n_train), ("dev", n_dev)):
            recs = {}
            for i in range(n):
                k = rng.randrange(len(labels))
                recs[str(i)] = {
                    "text_a": f"premise {i}",
                    "text_b": f"the {rng.choice(NOUNS)} is {['good', 'bad', 'fine'][k % 3]}",
                    "label": labels[k],
                }
            (d / f"{split}.json").write_text(json.dumps(recs, indent=4))
    # AX: diagnostic, no labels
    (root / "diagnostic").mkdir(exist_ok=True)
    (root / "diagnostic" / "diagnostic.tsv").write_text(
        "index\tsentence1\tsentence2\n" + "".join(f"{i}\tThe cat sat.\t{_sentence(rng, y)}\n" for i, y in rows(n_test))
    )
    return root


@pytest.fixture
def glue_root(tmp_path) -> Path:
    return write_glue_fixture(tmp_path / "glue")


JSON_TASK = {"fields": {"text_a": "text_a", "text_b": "text_b", "label": "label"}}


def tiny_config(glue_root: Path, encoder: Path, cache: Path, tasks=("SST-2", "MRPC", "STS-B"), **sections) -> dict:
    """A raw config dict for a tiny run: tiny encoder, the fixture data, a few steps."""
    task_entries = {}
    for t in tasks:
        if t in ("MNLI", "QQP"):
            dev = "dev_matched" if t == "MNLI" else "dev"
            splits = {
                "train": {"path": f"{t}/partial/powerfulpromptft_sample/train.json"},
                dev: {"path": f"{t}/partial/powerfulpromptft_sample/dev.json", "report_as": t},
            }
            if t == "MNLI":
                splits.update(dev_mismatched=None, test_matched=None, test_mismatched=None)
            else:
                splits["test"] = None
            task_entries[t] = {**JSON_TASK, "splits": splits}
        else:
            task_entries[t] = {}
    cfg = {
        "seeds": [0],
        "encoder": {"name": str(encoder)},
        "data": {"root": str(glue_root), "cache_dir": str(cache), "max_seq_len": 32},
        "tasks": task_entries,
        "mtl": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "checkpoint_every": 1000},
        "finetune": {"epochs": 1, "batch_size": 8, "lr": 1e-3, "checkpoint_every": 1000},
    }
    for k, v in sections.items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    return cfg


# ------------------------------------------------------------------------- the shared trained model
# classification; regression with a label range (pair); pair classification; 3 labels (pair); a task on
# another task's head (AX on MNLI's). In this order in the model folder (the tests read it).
TRAINED_TASKS = ("SST-2", "STS-B", "MRPC", "MNLI", "AX")


def _folder_digest(folder: Path) -> dict[str, str]:
    import hashlib

    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="session")
def trained_model_dir(tiny_encoder, tmp_path_factory) -> Path:
    """One tiny MT-DNN on TRAINED_TASKS, trained once per session by `mtkd run` (stage mtl, one epoch
    on the fixture data), as a model folder. Shared and read-only: a test that changes the folder takes
    `trained_model_copy`; the check after the session fails the run if the folder changed."""
    import yaml

    from mtkd.cli import main

    base = tmp_path_factory.mktemp("trained")
    glue = write_glue_fixture(base / "glue")
    # data.max_seq_len 128 = the tiny encoder's positions: the tasks keep the encoder's full length
    raw = tiny_config(
        glue, encoder=tiny_encoder, cache=base / "cache", tasks=TRAINED_TASKS, stages=["mtl"], data={"max_seq_len": 128}
    )
    cfg = base / "config.yaml"
    cfg.write_text(yaml.safe_dump(raw, sort_keys=False))  # keep TRAINED_TASKS' order
    assert main(["run", str(cfg), "--output-dir", str(base / "out")]) == 0
    folder = base / "out" / "seed-0" / "mtl" / "model"
    before = _folder_digest(folder)
    yield folder
    assert _folder_digest(folder) == before, f"a test changed the shared model folder {folder}: use trained_model_copy"


@pytest.fixture(scope="session")
def trained_model(trained_model_dir):
    """The shared trained model, loaded once, in eval mode. Tests must leave it as they found it (a
    test that changes weights takes a copy.deepcopy); the check after the session compares its
    weights with the folder's."""
    import torch
    from safetensors.torch import load_file

    from mtkd.model import MTModel

    model = MTModel.from_pretrained(trained_model_dir).eval()
    yield model
    saved = load_file(str(trained_model_dir / "model.safetensors"))
    state = model.state_dict()
    changed = [k for k, v in saved.items() if not torch.equal(v, state[k])]
    assert not changed and not model.training, f"a test changed the shared trained model: {changed[:5]}"


@pytest.fixture
def trained_model_copy(trained_model_dir, tmp_path) -> Path:
    """A copy of the shared model folder that a test may change."""
    import shutil

    return Path(shutil.copytree(trained_model_dir, tmp_path / "model"))
