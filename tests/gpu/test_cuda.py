"""The CUDA paths, run where a GPU is present (`pytest -m gpu tests/gpu`; skipped elsewhere):
bf16 and fp16 autocast (fp16 with a grad scaler, checkpointed), PyTorch's dropout on CUDA in place
of mtkd's CPU masks, every model on the GPU, and a tiny KD pipeline end to end on CUDA."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import yaml

from conftest import tiny_config
from mtkd.checkpoint import STATE_FILE, list_checkpoints
from mtkd.cli import main
from mtkd.config import load_config
from mtkd.loop import train
from mtkd.model import MTModel, new_model
from mtkd.recipes.runner import Runner
from mtkd.task_data import TaskData

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _ctx(glue_root, tiny_encoder, tmp_path, **mtl):
    cfg = tiny_config(glue_root, tiny_encoder, tmp_path / "cache", tasks=("SST-2", "STS-B"), stages=["mtl"])
    cfg["mtl"].update(mtl)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    cfg = load_config(path)
    data, runner = TaskData(cfg), Runner(cfg, tmp_path / "out")
    return SimpleNamespace(cfg=cfg, accelerator=runner.accelerator, train_set=data.train_set,
                           new_model=lambda dropout=None: new_model(cfg.encoder, data.specs, runner.device, dropout))


@pytest.mark.parametrize("precision,dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_amp_trains_and_fp16_checkpoints_its_grad_scaler(glue_root, tiny_encoder, tmp_path, precision, dtype):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("no bf16 on this GPU")
    ctx = _ctx(glue_root, tiny_encoder, tmp_path, precision=precision, max_steps=6, checkpoint_every=3)
    model = ctx.new_model()
    assert next(model.parameters()).device.type == "cuda"
    seen = []
    handle = model.encoder.register_forward_hook(lambda m, i, o: seen.append(o.last_hidden_state.dtype))
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    summary = train(model, {t: ctx.train_set(t) for t in ("SST-2", "STS-B")}, ctx.cfg.mtl, 0, tmp_path / "out",
                    ctx.accelerator)
    handle.remove()
    assert summary["steps"] == 6 and set(seen) == {dtype}
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    state = json.loads((list_checkpoints(tmp_path / "out" / "checkpoints")[-1] / STATE_FILE).read_text())
    assert ("grad_scaler" in state) == (precision == "fp16")


def test_cuda_training_uses_pytorch_dropout_not_the_cpu_masks(glue_root, tiny_encoder, tmp_path, monkeypatch):
    import mtkd.dropout

    def cpu_only(*a, **k):
        raise AssertionError("mtkd's CPU dropout ran on CUDA")

    monkeypatch.setattr(mtkd.dropout, "fast_dropout", cpu_only)
    monkeypatch.setattr(mtkd.dropout, "keep_mask", cpu_only)
    ctx = _ctx(glue_root, tiny_encoder, tmp_path, max_steps=3, precision="fp32")
    model = ctx.new_model(dropout=0.3)
    train(model, {"SST-2": ctx.train_set("SST-2")}, ctx.cfg.mtl, 0, tmp_path / "out", ctx.accelerator)


def test_tiny_kd_pipeline_on_cuda_with_every_model_on_the_gpu(glue_root, tiny_encoder, tmp_path, monkeypatch):
    devices = set()
    real_encode = MTModel.encode

    def encode(self, *args, **kwargs):
        devices.add(next(self.parameters()).device.type)
        return real_encode(self, *args, **kwargs)

    monkeypatch.setattr(MTModel, "encode", encode)
    cfg = tiny_config(glue_root, tiny_encoder, tmp_path / "cache", tasks=("SST-2", "RTE", "STS-B"))
    cfg["stages"] = ["mtl", "finetune", "teach", "distill", "evaluate", "predict"]
    cfg["kd"] = {"teacher_tasks": ["RTE", "STS-B"], "select_by": ["RTE"], "candidates": [{"dropout": 0.1}, {"dropout": 0.2}],
                 "top_k": 2}
    path = tmp_path / "kd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    assert main(["run", str(path), "--output-dir", str(out)]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["systems"]) == {"mtdnn", "ensemble", "mtdnn_kd"} and (out / "submission.zip").is_file()
    assert devices == {"cuda"}


def test_fp16_resume_restores_the_grad_scaler_exactly(glue_root, tiny_encoder, tmp_path):
    ctx = _ctx(glue_root, tiny_encoder, tmp_path, precision="fp16", max_steps=6, checkpoint_every=3, keep_checkpoints=3)
    sets = {t: ctx.train_set(t) for t in ("SST-2", "STS-B")}
    torch.manual_seed(0)
    train(ctx.new_model(), sets, ctx.cfg.mtl, 0, tmp_path / "a", ctx.accelerator)
    full = list_checkpoints(tmp_path / "a" / "checkpoints")
    # the same run, stopped after step 3: delete step 6 and resume from step 3
    torch.manual_seed(0)
    train(ctx.new_model(), sets, ctx.cfg.mtl, 0, tmp_path / "b", ctx.accelerator)
    import shutil

    shutil.rmtree(list_checkpoints(tmp_path / "b" / "checkpoints")[-1])
    torch.manual_seed(0)
    train(ctx.new_model(), sets, ctx.cfg.mtl, 0, tmp_path / "b", ctx.accelerator)
    a = json.loads((full[-1] / STATE_FILE).read_text())
    b = json.loads((list_checkpoints(tmp_path / "b" / "checkpoints")[-1] / STATE_FILE).read_text())
    assert a["step"] == b["step"] == 6 and a["grad_scaler"] == b["grad_scaler"]
