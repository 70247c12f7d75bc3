"""mtkd: multi-task learning (MT-DNN) and multi-task knowledge distillation (MT-DNN-KD) for encoders."""

from mtkd.errors import MtkdError, DataError, ConfigError, CheckpointError
from mtkd.tasks import TaskSpec, HeadKind, load_task_specs, glue_tasks
from mtkd.model import MTModel

__version__ = "0.1.0"
__all__ = [
    "MtkdError", "DataError", "ConfigError", "CheckpointError",
    "TaskSpec", "HeadKind", "load_task_specs", "glue_tasks", "MTModel",
]
