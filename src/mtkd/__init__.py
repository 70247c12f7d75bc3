"""mtkd: multi-task learning (MT-DNN) and multi-task knowledge distillation (MT-DNN-KD) for encoders."""

from mtkd.errors import CheckpointError, ConfigError, DataError, MtkdError
from mtkd.tasks import HeadKind, TaskSpec, glue_tasks, load_task_specs

__version__ = "0.1.0"
__all__ = [
    "MtkdError",
    "DataError",
    "ConfigError",
    "CheckpointError",
    "TaskSpec",
    "HeadKind",
    "load_task_specs",
    "glue_tasks",
    "MTModel",
]


def __getattr__(name):  # MTModel (and torch) load on first use: ONNX serving (mtkd.export) needs no torch
    if name == "MTModel":
        from mtkd.model import MTModel

        return MTModel
    raise AttributeError(f"module 'mtkd' has no attribute {name!r}")
