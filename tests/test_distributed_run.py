"""The distributed command of docs/distributed-and-resume.md end to end: `mtkd run` under
`torchrun --nproc_per_node 2` and under `accelerate launch` (2 CPU processes, gloo) on a config with
every stage (single-task, MTL, fine-tune, teachers, student, evaluate, predict) on a tiny encoder.

Tolerance: dropout is 0 everywhere, so 2 processes train the same models as 1 up to float rounding
(the ranks pad their halves of each batch separately; weights differ by ~1e-6, see
test_distributed.py). Every dev metric of every system must agree within 0.01 points (x100 scale;
observed: 0.0006), the leaderboard label files must be identical and the STS-B scores within 1e-3.
A rank killed mid-run must bring the whole launch down within a bounded time (no hang).
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config, write_glue_fixture
from mtkd.cli import main as cli_main
from test_distributed import _free_port, torchrun

pytestmark = pytest.mark.integration  # torchrun and accelerate launch of every stage, a killed rank

METRIC_TOLERANCE = 0.01  # points (x100)
STAGES = ["single_task", "mtl", "finetune", "teach", "distill", "evaluate", "predict"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_encoder):
    base = tmp_path_factory.mktemp("ddp-run")
    glue = write_glue_fixture(base / "glue", n_train=32, n_dev=16, n_test=8)
    raw = tiny_config(glue, tiny_encoder, base / "cache", tasks=("SST-2", "STS-B", "RTE", "MNLI"), stages=STAGES)
    raw["encoder"]["dropout"] = 0.0
    for entry in raw["tasks"].values():
        entry["dropout"] = 0.0
    raw["kd"] = {
        "teacher_tasks": ["RTE", "MNLI", "STS-B"],
        "select_by": ["RTE"],
        "top_k": 2,
        "candidates": [{"dropout": 0.0}, {"dropout": 0.0}, {"dropout": 0.0}],
    }
    cfg = base / "kd.yaml"
    cfg.write_text(yaml.safe_dump(raw))
    single = base / "single"
    assert cli_main(["run", str(cfg), "--output-dir", str(single)]) == 0
    return base, cfg, single


def _submission(path: Path) -> dict[str, list[list[str]]]:
    with zipfile.ZipFile(path) as z:
        return {n: list(csv.reader(io.StringIO(z.read(n).decode()), delimiter="\t")) for n in z.namelist()}


def _assert_same_results(single: Path, multi: Path):
    a = json.loads((single / "results.json").read_text())["systems"]
    b = json.loads((multi / "results.json").read_text())["systems"]
    assert set(a) == set(b) == {"single_task", "mtdnn", "ensemble", "mtdnn_kd"}
    for system in a:
        assert a[system].keys() == b[system].keys()
        for task, metrics in a[system].items():
            for m, v in metrics.items():
                assert abs(v - b[system][task][m]) <= METRIC_TOLERANCE, (system, task, m, v, b[system][task][m])
    sa, sb = _submission(single / "submission.zip"), _submission(multi / "submission.zip")
    assert sa.keys() == sb.keys() and {"SST-2.tsv", "RTE.tsv", "STS-B.tsv"} <= sa.keys()
    for name in sa:
        if name == "STS-B.tsv":
            assert [r[0] for r in sa[name]] == [r[0] for r in sb[name]]
            assert all(abs(float(x[1]) - float(y[1])) < 1e-3 for x, y in zip(sa[name][1:], sb[name][1:], strict=True))
        else:
            assert sa[name] == sb[name], name
    # one writer: the soft targets and the stage markers are complete and written once
    teach = json.loads((multi / "seed-0" / "teach" / "DONE.json").read_text())
    assert len(teach["members"]) == 2 and set(teach["ensemble_dev"]) == {"RTE", "MNLI", "STS-B"}


def test_torchrun_runs_every_stage_and_matches_one_process(setup):
    base, cfg, single = setup
    out = base / "torchrun"
    started = time.time()
    r = torchrun("--", "run", cfg, "--output-dir", out, timeout=400)
    assert r.returncode == 0, r.stderr[-4000:]
    _assert_same_results(single, out)
    # a rerun under torchrun reuses every stage (no collective mismatch on the cached path either)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")}
    r = torchrun("--", "run", cfg, "--output-dir", out, timeout=200)
    assert r.returncode == 0, r.stderr[-4000:]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("model.safetensors")} == stamps
    print(f"torchrun run: {time.time() - started:.0f} s")


def test_accelerate_launch_runs_every_stage_and_matches_one_process(setup):
    base, cfg, single = setup
    out = base / "accelerate"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    # --multi_gpu is Accelerate's torchrun launcher; without GPUs mtkd's ranks run on the CPU with gloo
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        "-m",
        "mtkd.cli",
        "run",
        str(cfg),
        "--output-dir",
        str(out),
    ]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stderr[-4000:]
    _assert_same_results(single, out)


def test_a_killed_rank_ends_the_launch_without_a_hang(setup):
    base, cfg, _ = setup
    out = base / "killed"
    started = time.time()
    # rank 1 is SIGKILLed at its 6th update (inside the single-task stage); rank 0 must not wait forever
    r = torchrun("--signal-at", "5:KILL", "--only-rank", "1", "--", "run", cfg, "--output-dir", out, timeout=120)
    elapsed = time.time() - started
    assert r.returncode != 0
    assert "Signals.SIGKILL" in r.stderr or "exitcode  : -9" in r.stderr, r.stderr[-3000:]
    assert elapsed < 90, f"took {elapsed:.0f} s to end"
