"""DDP on CPU: `torchrun --nproc_per_node 2` (gloo) on a tiny MTL run.

In mtkd `mtl.batch_size` is the global batch: under 2 processes each rank takes half of every
single-task batch (sampler.shard), and the loss is scaled so that DDP's gradient average is the
mean over the global batch. So 2 processes x 16 examples must train the same model as 1 process
x 32 examples (up to float rounding: the ranks pad their halves separately). Dropout is 0 so the
runs are comparable. Both runs go through tests/_train_helper.py's hook, which records the task and
the example indices of every loss computation per rank.

Also: a stop signal or a NaN loss on one rank only must stop every rank at the same step (no hung
collective) with rank 0's checkpoint written, and a resumed DDP run matches the uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from safetensors.torch import load_file

import mtkd.loop
from conftest import tiny_config, write_glue_fixture
from mtkd.checkpoint import STATE_FILE, list_checkpoints
from mtkd.cli import main as cli_main
from mtkd.config import load_config
from mtkd.recipes.evaluate import evaluate
from mtkd.recipes.runner import Runner
from mtkd.task_data import TaskData

HELPER = Path(__file__).parent / "_train_helper.py"
TASKS = ("SST-2", "STS-B", "MNLI")
STEPS = 12  # 3 tasks x (32 + 16 examples) = 6 global batches per epoch, 2 epochs
TOLERANCE = 1e-4  # max abs weight difference, 2 processes vs 1 (observed: ~2e-6)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args, timeout=150) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(_free_port()), str(HELPER), *map(str, args)]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        # a hung collective. The workers run in their own sessions and hold the output pipes:
        # stop torchrun, then kill its workers, then read the output
        workers = _children(p.pid)
        p.terminate()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        out, err = p.communicate()
        pytest.fail(f"torchrun did not finish in {timeout} s (hung ranks?):\n{err[-4000:]}")
    return subprocess.CompletedProcess(cmd, p.returncode, out, err)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:  # ppid
            found.append(int(stat.parent.name))
    return found


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_encoder):
    base = tmp_path_factory.mktemp("ddp")
    glue = write_glue_fixture(base / "glue")
    raw = tiny_config(glue, tiny_encoder, base / "cache", tasks=TASKS, stages=["mtl", "evaluate"],
                      mtl={"epochs": 2, "batch_size": 32, "checkpoint_every": 4})
    raw["encoder"]["dropout"] = 0.0
    for entry in raw["tasks"].values():
        entry["dropout"] = 0.0  # the heads' own dropout (glue_tasks.yaml: 0.05 / 0.1 / 0.3)
    cfg = base / "config.yaml"
    cfg.write_text(yaml.safe_dump(raw))

    # 2 processes
    ddp, rec2 = base / "ddp", base / "rec-ddp"
    r = torchrun("--record", rec2, "--", "mtl", cfg, "--output-dir", ddp)
    assert r.returncode == 0, r.stderr[-4000:]

    # 1 process, in-process, same recording hook
    single, rec1 = base / "single", []
    real = mtkd.loop.default_loss

    def recording(model):
        fn = real(model)

        def loss_fn(task, logits, batch):
            rec1.append({"task": task, "index": batch["index"].tolist()})
            return fn(task, logits, batch)
        return loss_fn

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(mtkd.loop, "default_loss", recording)
        assert cli_main(["mtl", str(cfg), "--output-dir", str(single)]) == 0
    return SimpleNamespace(base=base, cfg=cfg, ddp=ddp, single=single, rec1=rec1,
                           rec2=[read_records(rec2 / f"rank-{r}.jsonl") for r in (0, 1)])


def test_each_rank_trains_half_of_the_same_single_task_batch(runs):
    r0, r1 = runs.rec2
    assert len(runs.rec1) == len(r0) == len(r1) == STEPS
    for step, (one, a, b) in enumerate(zip(runs.rec1, r0, r1)):
        assert one["task"] == a["task"] == b["task"], f"step {step}: the ranks trained different tasks"
        assert not set(a["index"]) & set(b["index"]), f"step {step}: an example on both ranks"
        assert sorted(a["index"] + b["index"]) == sorted(one["index"]), f"step {step}: not the 1-process batch"
        assert len(a["index"]) == len(b["index"]) == len(one["index"]) // 2
    assert {x["task"] for x in runs.rec1} == set(TASKS)
    assert sorted(len(x["index"]) for x in r0) == [8] * 6 + [16] * 6  # per rank: 16 of 32, 8 of 16


def test_two_processes_train_the_same_model_as_one(runs, tiny_encoder):
    a = load_file(str(runs.single / "model" / "model.safetensors"))
    b = load_file(str(runs.ddp / "model" / "model.safetensors"))
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff < TOLERANCE, f"max abs weight difference {diff}"
    init = load_file(str(tiny_encoder / "model.safetensors"))  # and the runs did move the encoder
    key = "encoder.layer.0.attention.self.query.weight"
    assert float((a["encoder." + key] - init[key]).abs().max()) > 10 * TOLERANCE
    cfg = load_config(runs.cfg)
    data, runner = TaskData(cfg), Runner(cfg, runs.base / "eval")
    m1 = evaluate(data, runner, {t: runs.single / "model" for t in data.specs})
    m2 = evaluate(data, runner, {t: runs.ddp / "model" for t in data.specs})
    assert m1.keys() == m2.keys() == set(TASKS)
    for task in m1:
        assert m1[task].keys() == m2[task].keys()
        for metric, v in m1[task].items():
            assert abs(v - m2[task][metric]) < 0.01, (task, metric, v, m2[task][metric])


def test_the_logged_loss_is_the_global_batch_loss(runs):
    """Under DDP each rank computes its half of a batch; the log holds the mean over the whole batch
    (the 1-process run's loss, up to float rounding), not rank 0's half."""
    one = read_records(runs.single / "metrics.jsonl")
    two = read_records(runs.ddp / "metrics.jsonl")
    assert [x["step"] for x in one] == [x["step"] for x in two]
    diffs = [abs(a["loss"] - b["loss"]) for a, b in zip(one, two)]
    assert max(diffs) < 1e-3, diffs


def test_only_rank_0_writes(runs):
    out = runs.ddp
    logged = read_records(out / "metrics.jsonl")
    assert [x["step"] for x in logged] == list(range(1, STEPS + 1))  # one writer: each step once
    assert [x["task"] for x in logged] == [x["task"] for x in runs.rec1]
    assert len(list((out / "tensorboard").iterdir())) == 1  # one event file, not one per rank
    done = json.loads((out / "DONE.json").read_text())
    assert done["steps"] == STEPS and done["train_examples"] == {t: 48 for t in TASKS}
    assert sorted(p.name for p in out.iterdir()) == ["DONE.json", "metrics.jsonl", "model", "tensorboard"]
    assert sorted(p.name for p in (out / "model").iterdir()) == [
        "README.md", "config.json", "model.safetensors", "model_card.json", "tokenizer.json", "tokenizer_config.json"]


def test_a_signal_on_one_rank_stops_every_rank_at_the_same_step_and_resume_matches(runs, tmp_path):
    out = tmp_path / "run"
    # only rank 1 gets SIGTERM, at the start of update 4: both ranks must finish update 4 and stop
    r = torchrun("--signal-at", "4:TERM", "--only-rank", "1", "--", "mtl", runs.cfg, "--output-dir", out, timeout=60)
    assert r.returncode != 0
    assert "stopped by signal 15 after step 5" in r.stderr  # rank 1
    assert "stopped by signal (on another rank) after step 5" in r.stderr  # rank 0
    ckpts = list_checkpoints(out / "checkpoints")
    assert [json.loads((p / STATE_FILE).read_text())["step"] for p in ckpts] == [4, 5]
    assert [x["step"] for x in read_records(out / "metrics.jsonl")] == [1, 2, 3, 4, 5]
    r = torchrun("--", "mtl", runs.cfg, "--output-dir", out)
    assert r.returncode == 0, r.stderr[-4000:]
    a = load_file(str(runs.ddp / "model" / "model.safetensors"))
    b = load_file(str(out / "model" / "model.safetensors"))
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert diff == 0.0, f"resumed DDP run differs from the uninterrupted one by {diff}"
    assert [x["step"] for x in read_records(out / "metrics.jsonl")] == list(range(1, STEPS + 1))


def test_nan_on_one_rank_stops_every_rank_with_a_checkpoint(runs, tmp_path):
    out = tmp_path / "run"
    r = torchrun("--nan-at", "6", "--only-rank", "1", "--", "mtl", runs.cfg, "--output-dir", out, timeout=60)
    assert r.returncode != 0
    assert "loss is nan at step 6" in r.stderr  # rank 1
    assert "loss is not finite on another rank at step 6" in r.stderr  # rank 0 stopped too, no hang
    steps = [json.loads((p / STATE_FILE).read_text())["step"] for p in list_checkpoints(out / "checkpoints")]
    assert steps[-1] == 6
    assert [x["step"] for x in read_records(out / "metrics.jsonl")] == list(range(1, 7))
    assert not (out / "model").exists()
