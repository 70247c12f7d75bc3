"""Damaged files and full disks (issue 12, items 5, 6, 7, 9): a damaged newest checkpoint is
skipped for the newest good one; a checkpoint or model write that runs out of space removes its
partial files, keeps the older ones and says how much space it needs; stale temp folders from a
kill are removed; a damaged model folder is refused naming the file; an encoder name that is
neither a folder nor a reachable hub name says which it was taken for.

Checkpoint tests use a 512x512 linear layer with Adam (1 MB of weights, 2 MB of optimizer
state); model-folder tests use the tiny encoder of conftest. No network is used."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError

import mtkd.checkpoint as ckpt
from mtkd.checkpoint import STATE_FILE, file_digest, list_checkpoints, load_latest_checkpoint, save_checkpoint
from mtkd.cli import main as cli_main
from mtkd.errors import CheckpointError, DiskFullError
from mtkd.encoders import resolve_encoder
from mtkd.model import MTModel, weights_sha256
from mtkd.tasks import glue_tasks

EXPECT = {"tasks": ["SST-2"], "encoder": "lin"}


def _model_and_opt(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(512, 512)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(torch.randn(2, 512)).sum().backward()
    opt.step()
    return model, opt


@pytest.fixture
def two_checkpoints(tmp_path):
    """Checkpoints of steps 1 and 2 (different weights) -> (folder, {step: weights})."""
    folder = tmp_path / "checkpoints"
    weights = {}
    for step in (1, 2):
        model, opt = _model_and_opt(step)
        save_checkpoint(folder, model, opt, {**EXPECT, "step": step})
        weights[step] = {k: v.clone() for k, v in model.state_dict().items()}
    return folder, weights


def _loads_step(folder: Path, weights: dict) -> tuple[Path, dict]:
    model, opt = _model_and_opt(99)
    path, state = load_latest_checkpoint(folder, model, opt, EXPECT)
    assert all(torch.equal(v, weights[state["step"]][k]) for k, v in model.state_dict().items())
    return path, state


# ------------------------------------------------------------------ item 5: damaged checkpoints
def test_checkpoint_records_size_and_sha256_of_its_files(two_checkpoints):
    folder, _ = two_checkpoints
    newest = list_checkpoints(folder)[-1]
    files = json.loads((newest / STATE_FILE).read_text())["files"]
    assert set(files) == {"model.safetensors", "optimizer.pt"}
    for name, rec in files.items():
        data = (newest / name).read_bytes()
        assert rec == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _truncate(f: Path):
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _flip_byte(f: Path):  # same size: only the checksum sees it
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0xFF
    f.write_bytes(bytes(b))


DAMAGE = {
    "truncated weights": ("model.safetensors", _truncate, "bytes"),
    "truncated optimizer": ("optimizer.pt", _truncate, "bytes"),
    "flipped byte in weights": ("model.safetensors", _flip_byte, "sha256"),
    "missing optimizer": ("optimizer.pt", Path.unlink, "is missing"),
    "unparsable state": (STATE_FILE, lambda f: f.write_text('{"step": 2, "tas'), "unreadable"),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_older_one_with_a_warning(two_checkpoints, damage, caplog):
    folder, weights = two_checkpoints
    name, spoil, what = DAMAGE[damage]
    spoil(folder / "step-000000002" / name)
    with caplog.at_level(logging.WARNING, logger="mtkd.checkpoint"):
        path, state = _loads_step(folder, weights)
    assert path.name == "step-000000001" and state["step"] == 1
    warning = caplog.records[-1].getMessage()
    assert str(folder / "step-000000002") in warning and name in warning and what in warning


def test_every_checkpoint_damaged_raises_naming_each(two_checkpoints):
    folder, _ = two_checkpoints
    _truncate(folder / "step-000000001" / "optimizer.pt")
    _flip_byte(folder / "step-000000002" / "model.safetensors")
    model, opt = _model_and_opt(99)
    with pytest.raises(CheckpointError) as e:
        load_latest_checkpoint(folder, model, opt, EXPECT)
    msg = str(e.value)
    assert f"no usable checkpoint in {folder}" in msg
    assert f"{folder / 'step-000000001'}: optimizer.pt is" in msg and f"{folder / 'step-000000002'}: model.safetensors has sha256" in msg


def test_checkpoint_without_recorded_checksums_loads_and_an_unreadable_one_is_skipped(two_checkpoints, caplog):
    """Checkpoints written before checksums were recorded: loaded as before; a damaged one is
    found when its file cannot be read, and skipped the same way."""
    folder, weights = two_checkpoints
    for p in list_checkpoints(folder):
        state = json.loads((p / STATE_FILE).read_text())
        del state["files"]
        (p / STATE_FILE).write_text(json.dumps(state))
    assert _loads_step(folder, weights)[1]["step"] == 2
    _truncate(folder / "step-000000002" / "optimizer.pt")
    with caplog.at_level(logging.WARNING, logger="mtkd.checkpoint"):
        assert _loads_step(folder, weights)[1]["step"] == 1
    assert "optimizer.pt cannot be read (RuntimeError" in caplog.records[-1].getMessage()


def test_training_resumes_from_the_newest_good_checkpoint(tmp_path, tiny_encoder, caplog):
    """Through the loop: checkpoints of steps 2 and 3, step 3's weights truncated; the rerun
    resumes at step 2 (warning names step 3) and trains step 3 again."""
    import yaml

    from conftest import tiny_config, write_glue_fixture
    from mtkd.config import load_config
    from mtkd.loop import train
    from mtkd.model import new_model
    from mtkd.recipes.runner import Runner
    from mtkd.task_data import TaskData

    raw = tiny_config(write_glue_fixture(tmp_path / "glue", n_train=16), tiny_encoder, tmp_path / "cache", tasks=("SST-2",),
                      mtl={"max_steps": 3, "checkpoint_every": 1})
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(raw))
    cfg = load_config(tmp_path / "c.yaml")
    data, runner = TaskData(cfg), Runner(cfg, tmp_path / "run")
    out = tmp_path / "run"
    out.mkdir()
    sets = {"SST-2": data.train_set("SST-2")}
    assert train(new_model(cfg.encoder, data.specs, runner.device), sets, cfg.mtl, 0, out, runner.accelerator)["steps"] == 3
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-000000002", "step-000000003"]
    _truncate(out / "checkpoints" / "step-000000003" / "model.safetensors")
    with caplog.at_level(logging.INFO):
        summary = train(new_model(cfg.encoder, data.specs, runner.device), sets, cfg.mtl, 0, out, runner.accelerator)
    messages = [r.getMessage() for r in caplog.records]
    assert any("step-000000003 is damaged (model.safetensors is" in m for m in messages)
    assert any("step-000000002 (step 2 of 3)" in m for m in messages)
    assert summary["steps"] == 3 and summary["examples"] == 8  # one update (step 3) was trained again
    assert [p.name for p in list_checkpoints(out / "checkpoints")] == ["step-000000002", "step-000000003"]


# ----------------------------------------------------------------------- item 6: disk full
MB_NEEDED = math.ceil((3 * (512 * 512 + 512) * 4 + 2 * 4 + 2**20) / 2**20)  # weights + Adam's 2 moments + 2 steps + 1 MiB


def _partial_then(exc):
    """A writer that writes half a megabyte of the file, then fails like a full disk."""
    def writer(obj, target, *a, **k):
        Path(target).write_bytes(b"\0" * 500_000)
        raise exc
    return writer


FULL = {
    "OSError ENOSPC in torch.save": ("save", OSError(errno.ENOSPC, "No space left on device")),
    "torch.save iostream error": ("save", RuntimeError("basic_ios::clear: iostream error")),
    "safetensors write error": ("save_file", SafetensorError("Error while serializing: IoError(Os { code: 28, "
                                                             "kind: StorageFull, message: \"No space left on device\" })")),
}


@pytest.mark.parametrize("case", list(FULL))
def test_disk_full_removes_the_partial_checkpoint_and_keeps_the_good_one(two_checkpoints, monkeypatch, case):
    folder, weights = two_checkpoints
    where, exc = FULL[case]
    if where == "save":
        monkeypatch.setattr(ckpt.torch, "save", _partial_then(exc))
    else:
        monkeypatch.setattr(ckpt, "save_file", _partial_then(exc))
    # the iostream error carries no errno: the free space decides (here: less than the checkpoint needs)
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda p: namedtuple("U", "total used free")(10 * 2**30, 0, 3 * 2**20))
    model, opt = _model_and_opt(3)
    with pytest.raises(DiskFullError) as e:
        save_checkpoint(folder, model, opt, {**EXPECT, "step": 3})
    assert str(e.value).startswith(f"no space left on {folder}: about {MB_NEEDED} MB needed, 3 MB free; "
                                   "the checkpoint of step 3 was not written")
    assert sorted(p.name for p in folder.iterdir()) == ["step-000000001", "step-000000002"]  # partial folder gone
    monkeypatch.undo()
    assert _loads_step(folder, weights)[1]["step"] == 2


def test_a_write_error_with_space_left_is_a_checkpoint_error_naming_the_folder(two_checkpoints, monkeypatch):
    folder, _ = two_checkpoints
    monkeypatch.setattr(ckpt.torch, "save", _partial_then(RuntimeError("basic_ios::clear: iostream error")))
    model, opt = _model_and_opt(3)
    with pytest.raises(CheckpointError, match=f"{folder}: writing the checkpoint of step 3 failed: RuntimeError"):
        save_checkpoint(folder, model, opt, {**EXPECT, "step": 3})
    assert sorted(p.name for p in folder.iterdir()) == ["step-000000001", "step-000000002"]


def test_temp_folders_left_by_a_kill_are_removed_by_the_next_save(two_checkpoints):
    folder, _ = two_checkpoints
    stale = folder / ".tmp-killed"
    stale.mkdir()
    (stale / "model.safetensors").write_bytes(b"\0" * 1_000_000)
    model, opt = _model_and_opt(3)
    save_checkpoint(folder, model, opt, {**EXPECT, "step": 3})
    assert sorted(p.name for p in folder.iterdir()) == ["step-000000002", "step-000000003"]


# ------------------------------------------------------------------- item 7: model folders
SPECS = {n: glue_tasks()[n] for n in ("SST-2", "STS-B")}


@pytest.fixture(scope="module")
def saved_model(tiny_encoder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("integrity") / "model"
    MTModel.from_encoder(str(tiny_encoder), SPECS).save_pretrained(folder)
    return folder


@pytest.fixture
def model_copy(saved_model, tmp_path):
    return Path(shutil.copytree(saved_model, tmp_path / "model"))


def test_save_pretrained_records_the_weights_checksum(saved_model):
    cfg = json.loads((saved_model / "config.json").read_text())
    assert cfg["weights"] == {"file": "model.safetensors", **file_digest(saved_model / "model.safetensors")}
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(cfg["tokenizer_files"])
    assert weights_sha256(saved_model) == hashlib.sha256((saved_model / "model.safetensors").read_bytes()).hexdigest()
    assert not list(saved_model.glob("*.tmp"))


def _drop_records(folder: Path):
    """An older model folder: no checksum, no tokenizer file list."""
    cfg = json.loads((folder / "config.json").read_text())
    del cfg["weights"], cfg["tokenizer_files"]
    (folder / "config.json").write_text(json.dumps(cfg))


def test_older_model_folder_without_checksum_still_loads(model_copy, saved_model):
    _drop_records(model_copy)
    assert set(MTModel.from_pretrained(model_copy).tasks) == set(SPECS)
    assert weights_sha256(model_copy) == weights_sha256(saved_model)  # hashed, the same identity


OWN = ("config.json", "model.safetensors")
MODEL_DAMAGE = {
    "truncated weights": (lambda f: _truncate(f / "model.safetensors"), "{m}/model.safetensors: is", "bytes"),
    "flipped byte": (lambda f: _flip_byte(f / "model.safetensors"), "{m}/model.safetensors: has sha256", "damaged"),
    "missing tokenizer file": (lambda f: (f / "tokenizer.json").unlink(), "{m}: tokenizer files missing", "tokenizer.json"),
    "unparsable config.json": (lambda f: (f / "config.json").write_text("{"), "{m}/config.json: unreadable", "damaged"),
    "old folder, unreadable weights": (lambda f: (_drop_records(f), _truncate(f / "model.safetensors")),
                                       "{m}/model.safetensors: not a readable safetensors file", "deserializing"),
    "old folder, no tokenizer": (lambda f: (_drop_records(f), *(p.unlink() for p in f.iterdir() if p.name not in OWN)),
                                 "{m}: the tokenizer files are missing or unreadable", ""),
}


@pytest.mark.parametrize("damage", list(MODEL_DAMAGE))
def test_damaged_model_folder_is_refused_naming_the_file(model_copy, damage, capsys):
    spoil, where, what = MODEL_DAMAGE[damage]
    where = where.format(m=model_copy)
    spoil(model_copy)
    with pytest.raises(CheckpointError) as e:
        MTModel.from_pretrained(model_copy)
    assert where in str(e.value) and what in str(e.value)
    # the CLI (evaluate / predict load the same way) prints it as one line
    assert cli_main(["predict", "--model", str(model_copy), "--task", "SST-2", "--text", "a fine film"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("mtkd: error: ") and where in err and "\n" not in err


def test_disk_full_while_saving_a_model_keeps_the_previous_one(tiny_encoder, model_copy, monkeypatch):
    import mtkd.model

    before = weights_sha256(model_copy)
    monkeypatch.setattr(mtkd.model, "save_file", _partial_then(OSError(errno.ENOSPC, "No space left on device")))
    m = MTModel.from_encoder(str(tiny_encoder), SPECS, init="random")
    with pytest.raises(DiskFullError, match=f"no space left on {model_copy}: about \\d+ MB needed"):
        m.save_pretrained(model_copy)
    assert not list(model_copy.glob("*.tmp"))
    monkeypatch.undo()
    assert MTModel.from_pretrained(model_copy) and weights_sha256(model_copy) == before


# --------------------------------------------------------------------------- item 9: encoders
@pytest.mark.parametrize("name", ["./no-such-encoder", "runs/x/no-such-encoder", "~/no-such-mtkd-encoder", "/no/such/encoder"])
def test_path_like_encoder_name_that_does_not_exist(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    want = Path(name).expanduser().absolute()
    with pytest.raises(CheckpointError, match=f"^no encoder folder at {want}$"):
        resolve_encoder(name)
    with pytest.raises(CheckpointError, match=f"^no encoder folder at {want}$"):
        MTModel.from_encoder(name, SPECS)


def test_folder_without_config_json_is_not_an_encoder(tmp_path):
    with pytest.raises(CheckpointError, match=f"{tmp_path}: not an encoder folder"):
        resolve_encoder(str(tmp_path))


def test_hub_name_offline_needs_a_network_or_a_local_copy(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as e:
        resolve_encoder("some-org/some-encoder")
    msg = str(e.value)
    assert f"encoder 'some-org/some-encoder': no encoder folder at {tmp_path / 'some-org/some-encoder'}" in msg
    assert "needs a network connection or a local copy (HF_HUB_OFFLINE is set" in msg


def test_hub_name_without_network(monkeypatch):
    import huggingface_hub.constants

    import mtkd.encoders

    def no_network(*a, **k):
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them "
                      "in the cached files.\nCheck your internet connection")

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(mtkd.encoders.AutoConfig, "from_pretrained", no_network)
    with pytest.raises(CheckpointError, match="as a hub name it needs a network connection or a local copy "
                                              r"\(the hub could not provide it: We couldn't connect to 'https://huggingface.co'"):
        resolve_encoder("bert-tiny-nonexistent")


def test_encoder_folder_with_truncated_weights_names_the_folder(tiny_encoder, tmp_path):
    enc = Path(shutil.copytree(tiny_encoder, tmp_path / "enc"))
    _truncate(enc / "model.safetensors")
    with pytest.raises(CheckpointError, match=f"^{enc}: could not load the encoder \\("):
        MTModel.from_encoder(str(enc), SPECS)
