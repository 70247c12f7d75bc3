"""A stage is reused exactly when what it depends on is unchanged (issue: never a stale answer).

- a finished stage whose settings or data changed is trained again (and says what changed);
- a checkpoint written under other settings is refused, naming the keys, before config.yaml is
  touched; rerun with the old settings, it resumes;
- a stage's cleanup never deletes outside the run folder.
(The KD direction, a changed student loss weight reusing the teachers, is in test_kd_pipeline.py.)
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import tiny_config
from mtkd.checkpoint import STATE_FILE, list_checkpoints
from mtkd.cli import main
from mtkd.config import load_config
from mtkd.errors import ConfigError
from mtkd.stages import Stages

HELPER = Path(__file__).parents[1] / "_train_helper.py"


def _config(glue_root, tiny_encoder, tmp_path, **mtl):
    cfg = tiny_config(glue_root, tiny_encoder, tmp_path / "cache", tasks=("SST-2",), stages=["mtl", "evaluate"])
    cfg["mtl"].update(mtl)
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _done(out):
    return json.loads((out / "seed-0" / "mtl" / "DONE.json").read_text())


def test_changed_settings_retrain_and_unrelated_settings_reuse(glue_root, tiny_encoder, tmp_path, caplog):
    path = _config(glue_root, tiny_encoder, tmp_path, max_steps=2)
    out = tmp_path / "out"
    weights = out / "seed-0" / "mtl" / "model" / "model.safetensors"
    assert main(["run", str(path), "--output-dir", str(out)]) == 0
    first = weights.read_bytes()
    key = _done(out)["stage_key"]
    # a setting that does not shape the model (inference batch, checkpoint cadence): reused
    assert main(["run", str(path), "--output-dir", str(out), "--set", "predict.batch_size=7",
                 "--set", "mtl.checkpoint_every=3"]) == 0
    assert weights.read_bytes() == first and _done(out)["stage_key"] == key
    # the learning rate shapes it: trained again, and the log says why
    caplog.clear()
    assert main(["run", str(path), "--output-dir", str(out), "--set", "mtl.lr=0.5"]) == 0
    assert "out of date" in caplog.text and "train.lr: 0.001 -> 0.5" in caplog.text
    assert weights.read_bytes() != first
    assert _done(out)["identity"]["train"]["lr"] == 0.5 and _done(out)["stage_key"] != key
    assert yaml.safe_load((out / "config.yaml").read_text())["mtl"]["lr"] == 0.5


def test_changed_labels_retrain_and_change_the_metrics(glue_root, tiny_encoder, tmp_path, caplog):
    path = _config(glue_root, tiny_encoder, tmp_path, epochs=2)
    out = tmp_path / "out"
    assert main(["run", str(path), "--output-dir", str(out)]) == 0
    before = json.loads((out / "metrics.json").read_text())["SST-2"]["accuracy"]
    weights = (out / "seed-0" / "mtl" / "model" / "model.safetensors").read_bytes()
    train = glue_root / "SST-2" / "train.tsv"
    head, *rows = train.read_text().splitlines()
    flipped = [r.rsplit("\t", 1)[0] + "\t" + str(1 - int(r.rsplit("\t", 1)[1])) for r in rows]
    train.write_text("\n".join([head, *flipped]) + "\n")
    caplog.clear()
    assert main(["run", str(path), "--output-dir", str(out)]) == 0
    assert "tasks.SST-2.sha256" in caplog.text  # the data's fingerprint is what changed
    assert (out / "seed-0" / "mtl" / "model" / "model.safetensors").read_bytes() != weights
    after = json.loads((out / "metrics.json").read_text())["SST-2"]["accuracy"]
    assert after != before  # the metrics are those of the model trained on the new labels


def test_resume_under_changed_settings_is_refused_before_anything_is_written(glue_root, tiny_encoder, tmp_path, capsys):
    path = _config(glue_root, tiny_encoder, tmp_path, epochs=2, checkpoint_every=2)
    out = tmp_path / "out"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    # stopped by SIGTERM at update 3: a checkpoint of step 4 (after the current step), not finished
    r = subprocess.run([sys.executable, str(HELPER), "--signal-at", "3:TERM", "--", "run", str(path), "--output-dir", str(out)],
                       env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and "stopped by signal 15" in r.stderr, r.stderr[-2000:]
    stage = out / "seed-0" / "mtl"
    steps = [json.loads((p / STATE_FILE).read_text())["step"] for p in list_checkpoints(stage / "checkpoints")]
    assert steps and not (stage / "DONE.json").exists()
    config_before = (out / "config.yaml").read_text()
    ckpts_before = sorted(p.name for p in (stage / "checkpoints").iterdir())

    capsys.readouterr()
    assert main(["run", str(path), "--output-dir", str(out), "--set", "mtl.lr=0.005"]) == 2
    err = capsys.readouterr().err
    assert "train.lr: 0.001 -> 0.005" in err and str(stage / "checkpoints") in err and "resume" in err
    assert (out / "config.yaml").read_text() == config_before  # the refused run wrote nothing
    assert sorted(p.name for p in (stage / "checkpoints").iterdir()) == ckpts_before
    assert not (stage / "DONE.json").exists()

    # with the settings it was started with, it resumes and finishes under them
    assert main(["run", str(path), "--output-dir", str(out)]) == 0
    assert _done(out)["identity"]["train"]["lr"] == 0.001 and _done(out)["steps"] > steps[-1]
    lrs = [json.loads(line)["lr"] for line in (stage / "metrics.jsonl").read_text().splitlines()]
    assert max(lrs) <= 0.001  # no step ran under the refused learning rate


def test_cleanup_never_deletes_outside_the_run_folder(tmp_path):
    stages = Stages(tmp_path / "run", accelerator=None)
    outside = tmp_path / "precious" / "checkpoints"
    outside.mkdir(parents=True)
    (outside / "keep.txt").write_text("x")
    for target in (outside, tmp_path / "run" / ".." / "precious" / "checkpoints", tmp_path / "run"):
        with pytest.raises(ConfigError, match="not inside the run folder"):
            stages.remove_inside(target)
    assert (outside / "keep.txt").read_text() == "x"
    inside = tmp_path / "run" / "seed-0" / "mtl" / "checkpoints"
    inside.mkdir(parents=True)
    stages.remove_inside(inside)
    assert not inside.exists()


def test_planning_computes_the_keys_the_run_stores(glue_root, tiny_encoder, tmp_path):
    """The plan (made before anything trains, to refuse mismatched checkpoints) must key every
    stage exactly as the real run does, for a KD config with stages that start from other stages."""
    from mtkd.recipes import pipeline

    cfg = tiny_config(glue_root, tiny_encoder, tmp_path / "cache", tasks=("SST-2", "RTE"),
                      stages=["mtl", "finetune", "teach", "distill"])
    cfg["kd"] = {"teacher_tasks": ["RTE"], "select_by": ["RTE"], "candidates": [{"dropout": 0.1}, {"dropout": 0.2}], "top_k": 1}
    path = tmp_path / "kd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    planned = pipeline.plan(load_config(path), out)[1].stages.planned_keys()
    assert main(["run", str(path), "--output-dir", str(out)]) == 0
    done = {p.parent: json.loads(p.read_text())["stage_key"] for p in out.rglob("DONE.json")}
    trained = {folder: key for folder, key in done.items() if (folder / "model").is_dir()}
    assert len(trained) >= 9  # mtl, 2 finetunes, 2 candidates, 1 member finetune, student mtl + 2 finetunes
    for folder, key in trained.items():
        assert planned[str((folder / "model").resolve())] == key, folder
    assert planned[str((out / "seed-0" / "teach" / "soft_targets").resolve())] == done[out / "seed-0" / "teach"]
