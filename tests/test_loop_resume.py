"""Exact resume of the training loop: a run that is killed (SIGKILL, even while writing a
checkpoint), stopped (SIGTERM / SIGINT) or that diverges (NaN) and is then rerun ends with the same
weights, bit for bit, as a run that was never interrupted.

The run: 3 tasks x 48 examples, batch 8 -> 18 updates per epoch, 2 epochs = 36 updates, a
checkpoint every 5 updates and at each epoch end, the newest 2 kept. Dropout stays on, so the
resumed run must also restore the RNG. Interrupted runs are separate processes started through
tests/_train_helper.py (the real CLI plus a hook that signals or kills the process at a chosen
update); the resumed runs use the CLI in-process.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from safetensors.torch import load_file

from conftest import tiny_config, write_glue_fixture
from mtkd.checkpoint import STATE_FILE, list_checkpoints
from mtkd.cli import main as cli_main
from mtkd.config import load_config
from mtkd.errors import CheckpointError, TrainingDiverged
from mtkd.loop import default_loss, train
from mtkd.model import new_model
from mtkd.recipes import mtl
from mtkd.recipes.runner import Loss, Runner
from mtkd.task_data import TaskData

HELPER = Path(__file__).parent / "_train_helper.py"
TASKS = ("SST-2", "STS-B", "MNLI")
TOTAL = 36  # 2 epochs of 18 batches


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def helper(*args, timeout=120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HELPER), *map(str, args)], env=_env(), capture_output=True,
                          text=True, timeout=timeout)


def ckpt_steps(out: Path) -> list[int]:
    return [json.loads((p / STATE_FILE).read_text())["step"] for p in list_checkpoints(out / "checkpoints")]


def log_records(out: Path) -> list[dict]:
    """metrics.jsonl without the wall-clock field."""
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: r[k] for k in ("step", "epoch", "task", "loss", "lr")} for r in recs]


def assert_bit_identical(path: Path, ref: dict[str, torch.Tensor]) -> None:
    got = load_file(str(path))
    assert got.keys() == ref.keys()
    different = [k for k in ref if not torch.equal(got[k], ref[k])]
    assert not different, f"{len(different)} tensors differ from the uninterrupted run, e.g. {different[:3]}"


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_encoder):
    """Config + the uninterrupted reference run (in-process, one thread like the subprocesses)."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp("resume")
    glue = write_glue_fixture(base / "glue")
    raw = tiny_config(glue, tiny_encoder, base / "cache", tasks=TASKS, stages=["mtl"],
                      mtl={"epochs": 2, "checkpoint_every": 5, "keep_checkpoints": 2})
    cfg = base / "config.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    ref = base / "reference"
    assert cli_main(["mtl", str(cfg), "--output-dir", str(ref)]) == 0
    done = json.loads((ref / "DONE.json").read_text())
    assert done["steps"] == TOTAL and done["epochs"] == 2.0
    assert not (ref / "checkpoints").exists()  # removed once the model is saved
    return SimpleNamespace(base=base, glue=glue, raw=raw, cfg=cfg, weights=load_file(str(ref / "model" / "model.safetensors")),
                           log=log_records(ref))


def test_reference_log_is_complete(setup):
    assert [r["step"] for r in setup.log] == list(range(1, TOTAL + 1))
    assert [r["epoch"] for r in setup.log] == [0] * 18 + [1] * 18
    assert {r["task"] for r in setup.log} == set(TASKS)
    assert all(r["loss"] == r["loss"] for r in setup.log)  # finite numbers, no NaN


def test_sigkill_mid_epoch_and_during_checkpoint_write_then_resume_is_exact(setup, tmp_path):
    out = tmp_path / "run"
    args = ("--", "mtl", setup.cfg, "--output-dir", out)
    # 1. killed at the start of update 23 (mid second epoch): checkpoints of steps 18 (epoch end) and 20
    r = helper("--signal-at", "23:KILL", *args)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert ckpt_steps(out) == [18, 20]
    state = json.loads((list_checkpoints(out / "checkpoints")[-1] / STATE_FILE).read_text())
    assert state["sampler"]["epoch"] == 1 and state["sampler"]["position"] == 2
    assert not (out / "model").exists() and not (out / "DONE.json").exists()
    # 2. rerun, killed again while renaming the finished checkpoint of step 25 into place: the log
    #    already holds steps 21-25, the checkpoint does not exist
    r = helper("--kill-in-save", "25", *args)
    assert r.returncode == -signal.SIGKILL, r.stderr[-2000:]
    assert ckpt_steps(out) == [18, 20]
    assert any(p.name.startswith(".tmp") for p in (out / "checkpoints").iterdir())
    assert [x["step"] for x in log_records(out)][-1] == 25
    # 3. rerun to the end: same weights, same per-step losses, each step logged once
    assert cli_main(["mtl", str(setup.cfg), "--output-dir", str(out)]) == 0
    assert_bit_identical(out / "model" / "model.safetensors", setup.weights)
    assert log_records(out) == setup.log
    done = json.loads((out / "DONE.json").read_text())
    assert done["steps"] == TOTAL and done["examples"] == (TOTAL - 20) * 8  # examples: this call's updates only
    assert not (out / "checkpoints").exists()


def test_sigterm_finishes_the_step_checkpoints_and_resumes_exactly(setup, tmp_path):
    out = tmp_path / "run"
    r = helper("--signal-at", "7:TERM", "--", "mtl", setup.cfg, "--output-dir", out)
    assert r.returncode == 1
    assert "stopped by signal 15 after step 8" in r.stderr and "rerun the same command" in r.stderr
    # update 7 (0-based) was completed, then a checkpoint written; only the newest 2 are kept
    assert ckpt_steps(out) == [5, 8]
    assert [x["step"] for x in log_records(out)] == list(range(1, 9))
    for ck in list_checkpoints(out / "checkpoints"):
        assert sorted(p.name for p in ck.iterdir()) == ["model.safetensors", "optimizer.pt", STATE_FILE]
        opt = torch.load(ck / "optimizer.pt", weights_only=True)
        assert set(opt) == {"state", "param_groups"} and opt["state"]
        state = json.loads((ck / STATE_FILE).read_text())
        assert state["tasks"] == sorted(TASKS) and state["total_steps"] == TOTAL
        assert state["encoder"] == setup.raw["encoder"]["name"]
        assert set(state["sampler"]) >= {"epoch", "position"} and "torch" in state["rng"]
    assert cli_main(["mtl", str(setup.cfg), "--output-dir", str(out)]) == 0
    assert_bit_identical(out / "model" / "model.safetensors", setup.weights)
    assert log_records(out) == setup.log


def test_sigint_from_outside_at_an_arbitrary_step_then_resume_is_exact(setup, tmp_path):
    out = tmp_path / "run"
    log = out / "metrics.jsonl"
    p = subprocess.Popen([sys.executable, str(HELPER), "--sleep", "0.1", "--", "mtl", str(setup.cfg),
                          "--output-dir", str(out)], env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 90
        while not (log.is_file() and len(log.read_text().splitlines()) >= 10):  # flushed at the step-10 checkpoint
            assert p.poll() is None and time.time() < deadline, "the run ended or never reached step 10"
            time.sleep(0.02)
        os.kill(p.pid, signal.SIGINT)
        _, err = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 1, err[-2000:]
    assert "stopped by signal 2 after step" in err
    last = ckpt_steps(out)[-1]
    assert 10 <= last < TOTAL and f"after step {last};" in err
    assert [x["step"] for x in log_records(out)] == list(range(1, last + 1))
    assert cli_main(["mtl", str(setup.cfg), "--output-dir", str(out)]) == 0
    assert_bit_identical(out / "model" / "model.safetensors", setup.weights)
    assert log_records(out) == setup.log


def test_nan_loss_raises_with_step_and_task_and_keeps_the_last_good_state(setup, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(setup.cfg)
    seen: list[str] = []
    snapshot: dict[str, torch.Tensor] = {}

    def factory(model):
        base = default_loss(model)

        def loss_fn(task, logits, batch):
            seen.append(task)
            loss = base(task, logits, batch)
            if len(seen) == 8:  # update 7: 7 updates are done, this one goes NaN
                snapshot.update({k: v.detach().clone() for k, v in model.state_dict().items()})
                return loss * float("nan")
            return loss
        return loss_fn

    with pytest.raises(TrainingDiverged) as e:
        Runner(cfg, out).run([mtl.job(cfg, TaskData(cfg), out, 0, loss=Loss(factory))])
    msg = str(e.value)
    assert "loss is nan at step 7" in msg and f"task {seen[-1]}," in msg
    assert ckpt_steps(out)[-1] == 7
    weights = load_file(str(list_checkpoints(out / "checkpoints")[-1] / "model.safetensors"))
    assert weights.keys() == snapshot.keys()
    assert all(torch.equal(weights[k], snapshot[k]) and torch.isfinite(weights[k]).all() for k in weights)
    assert [x["step"] for x in log_records(out)] == list(range(1, 8))  # the log is closed, nothing lost
    assert not (out / "model").exists() and not (out / "DONE.json").exists()


def _run_mtl(cfg, out):
    return Runner(cfg, out).run([mtl.job(cfg, TaskData(cfg), out, 0)])[0]


def test_resume_refuses_a_checkpoint_of_another_task_set(setup, tmp_path):
    out = tmp_path / "run"
    cfg = load_config(setup.cfg)
    data, runner = TaskData(cfg), Runner(cfg, out)
    out.mkdir()
    train(new_model(cfg.encoder, data.specs, runner.device), {t: data.train_set(t) for t in TASKS},
          cfg.mtl.model_copy(update={"max_steps": 3, "checkpoint_every": 1}), 0, out, runner.accelerator)
    assert ckpt_steps(out) == [2, 3]
    before = sorted(p.name for p in (out / "checkpoints").iterdir())

    other = {**setup.raw, "tasks": {t: setup.raw["tasks"][t] for t in ("SST-2", "STS-B")}}
    cfg2 = tmp_path / "other.yaml"
    cfg2.write_text(yaml.safe_dump(other))
    with pytest.raises(CheckpointError, match=r"checkpoint tasks is \['MNLI', 'SST-2', 'STS-B'\] but this run has \['SST-2', 'STS-B'\]"):
        _run_mtl(load_config(cfg2, ["mtl.max_steps=3"]), out)
    # same tasks, another length of run: the learning-rate schedule differs, refused too
    with pytest.raises(CheckpointError, match="total_steps is 3 but this run has 4"):
        _run_mtl(load_config(setup.cfg, ["mtl.max_steps=4"]), out)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before
    assert not (out / "model").exists()


@pytest.mark.parametrize("precision,cuda,bf16,expected", [
    ("auto", True, True, "bf16"), ("auto", True, False, "fp16"), ("fp16", True, True, "fp16"),
    ("bf16", True, True, "bf16"), ("fp32", True, True, "no"),
    ("auto", False, False, "no"), ("bf16", False, False, "no"), ("fp16", False, False, "no"),
])
def test_amp_on_cuda_fp32_on_cpu(precision, cuda, bf16, expected):
    from mtkd.config import Precision
    from mtkd.loop import make_accelerator, mixed_precision_mode

    assert mixed_precision_mode(Precision(precision), cuda, bf16) == expected
    if not torch.cuda.is_available():
        assert make_accelerator(Precision(precision)).mixed_precision == "no"
