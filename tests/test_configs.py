"""Every YAML under configs/ (recursively) loads and validates, and resolves its tasks."""

from pathlib import Path

import pytest

from mtkd.config import load_config
from mtkd.tasks import load_task_specs

CONFIGS = sorted((Path(__file__).parent.parent / "configs").rglob("*.yaml"))


def test_there_are_configs():
    names = {p.name for p in CONFIGS}
    assert {"demo.yaml", "glue-cpu.yaml", "glue-kd-cpu.yaml", "glue-kd-gpu.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_config_loads(path):
    cfg = load_config(path)
    specs = load_task_specs({n: o.override for n, o in cfg.tasks.items()}, cfg.tasks_file)
    assert specs
    for t in cfg.kd.teacher_tasks + cfg.kd.select_by:
        assert t in specs
    header = path.read_text().splitlines()[:12]
    assert any("mtkd run" in line for line in header), "the header comment shows the command that runs it"
