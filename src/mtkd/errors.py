"""The project's own error types: every refusal of bad input raises one of these."""


class MtkdError(Exception):
    """Base class: a clear message naming the file, line/row or field, and what was expected."""


class DataError(MtkdError):
    """A data file is missing, malformed or inconsistent with its task definition."""

    def __init__(self, path, message, line=None, field=None):
        where = str(path)
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")
        self.path, self.line, self.field = path, line, field


class ConfigError(MtkdError):
    """A config key does not exist, or a value has the wrong type."""


class CheckpointError(MtkdError):
    """A checkpoint or saved model does not match the run (tasks, encoder) or is incomplete."""


class DiskFullError(MtkdError):
    """A checkpoint or model could not be written for lack of space; the partial write is removed."""


class SoftTargetError(MtkdError):
    """Soft targets do not match the data they are applied to (fingerprint, ids)."""


class TrainingDiverged(MtkdError):
    """The loss became NaN or infinite."""
