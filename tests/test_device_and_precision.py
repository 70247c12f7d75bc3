"""GPU-ready paths checked on the CPU: every model a recipe runs is moved to the accelerator's
device first; each stage trains under its own `precision`; `check_every` reads the loss on the host
only every N steps (the GPU sync), and a divergence is still caught and reported honestly."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

import mtkd.loop
from conftest import tiny_config
from mtkd.cli import main
from mtkd.errors import TrainingDiverged
from mtkd.model import MTModel


def _kd_config(glue_root, tiny_encoder, tmp_path, **sections):
    cfg = tiny_config(glue_root, tiny_encoder, tmp_path / "cache", tasks=("SST-2", "RTE"), **sections)
    cfg["stages"] = ["mtl", "finetune", "teach", "distill", "evaluate", "predict"]
    cfg["kd"] = {"teacher_tasks": ["RTE"], "select_by": ["RTE"], "candidates": [{"dropout": 0.1}, {"dropout": 0.2}], "top_k": 1}
    path = tmp_path / "kd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_every_model_a_recipe_runs_was_moved_to_the_accelerator_device(glue_root, tiny_encoder, tmp_path, monkeypatch):
    moved: dict[int, str] = {}
    ran: dict[int, str] = {}
    real_to, real_encode = MTModel.to, MTModel.encode

    def to(self, *args, **kwargs):
        moved[id(self)] = str(torch.device(args[0] if args else kwargs["device"]))
        return real_to(self, *args, **kwargs)

    def encode(self, *args, **kwargs):
        ran[id(self)] = "train" if self.training else "eval"
        return real_encode(self, *args, **kwargs)

    monkeypatch.setattr(MTModel, "to", to)
    monkeypatch.setattr(MTModel, "encode", encode)
    path = _kd_config(glue_root, tiny_encoder, tmp_path)
    assert main(["run", str(path), "--output-dir", str(tmp_path / "out")]) == 0
    # training (MTL, fine-tune, candidates, student) and inference (selection, soft targets,
    # ensemble, evaluate, predict) models alike
    assert "train" in ran.values() and "eval" in ran.values() and len(ran) >= 8
    not_moved = [m for m in ran if m not in moved]
    assert not not_moved, f"{len(not_moved)} of {len(ran)} models ran without being moved to the accelerator's device"
    assert set(moved[m] for m in ran) == {"cpu"}  # this machine's accelerator device


def test_each_stage_trains_under_its_own_precision(glue_root, tiny_encoder, tmp_path, monkeypatch):
    seen = []
    real = mtkd.loop.autocast

    def autocast(precision, device):
        seen.append(precision.value)
        return real(precision, device)

    monkeypatch.setattr(mtkd.loop, "autocast", autocast)
    cfg = tiny_config(glue_root, tiny_encoder, tmp_path / "cache", tasks=("SST-2", "RTE"), stages=["mtl", "finetune"])
    cfg["mtl"]["precision"] = "fp32"
    cfg["finetune"]["precision"] = "bf16"
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert main(["run", str(path), "--output-dir", str(tmp_path / "out")]) == 0
    assert seen == ["fp32", "bf16", "bf16"]  # MTL, then one fine-tune per task
    _, mode = real(mtkd.config.Precision.BF16, torch.device("cpu"))
    assert mode == "no"  # on the CPU bf16 is emulated and slow: fp32 whatever the config says


def test_check_every_logs_and_checks_every_n_steps(glue_root, tiny_encoder, tmp_path, monkeypatch):
    cfg = tiny_config(glue_root, tiny_encoder, tmp_path / "cache", tasks=("SST-2",), stages=["mtl"])
    cfg["mtl"].update(check_every=4, epochs=2)  # 48 examples / batch 8: 12 steps
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main(["run", str(path), "--output-dir", str(out)]) == 0
    steps = [json.loads(line)["step"] for line in (out / "seed-0" / "mtl" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 6, 8, 12]  # every 4th, and before each checkpoint (the epoch ends: 6, 12)

    # a NaN at an unchecked update (the 7th) is caught at the next check (the 8th, also a checkpoint
    # step), before that checkpoint is written: the newest checkpoint is the last good state
    real = mtkd.loop.default_loss
    calls = []

    def nan_at_6(model):
        fn = real(model)

        def loss_fn(task, logits, batch):
            calls.append(1)
            loss = fn(task, logits, batch)
            return loss * float("nan") if len(calls) == 7 else loss
        return loss_fn

    monkeypatch.setattr(mtkd.loop, "default_loss", nan_at_6)
    from mtkd.config import load_config
    from mtkd.recipes import mtl
    from mtkd.recipes.runner import Runner
    from mtkd.task_data import TaskData

    cfg = load_config(path, ["mtl.checkpoint_every=2"])
    with pytest.raises(TrainingDiverged, match=r"at step 7, .*read every 4 steps, so the last good state is the newest checkpoint"):
        Runner(cfg, tmp_path / "nan").run([mtl.job(cfg, TaskData(cfg), tmp_path / "nan", 0)])
    from safetensors.torch import load_file

    from mtkd.checkpoint import STATE_FILE, list_checkpoints

    newest = list_checkpoints(tmp_path / "nan" / "checkpoints")[-1]
    assert json.loads((newest / STATE_FILE).read_text())["step"] == 6
    assert all(torch.isfinite(v).all() for v in load_file(str(newest / "model.safetensors")).values())
