"""The project's own error types: every refusal of bad input raises one of these; and the one
"did you mean" suggestion used for every unknown name (config keys, task keys, fields, metrics,
task names, columns, labels)."""

import difflib


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


class ExportError(MtkdError):
    """A model could not be exported to ONNX, or the exported graph does not answer as the model does."""


def did_you_mean(name, options) -> str:
    """' (did you mean 'x'?)' for the option closest to `name` (case-insensitive first), else ''."""
    options, name = [str(o) for o in options], str(name)
    lower = {o.lower(): o for o in options}
    if lower.get(name.lower(), name) != name:
        match = [lower[name.lower()]]
    else:
        match = difflib.get_close_matches(name, options, n=1) or [
            lower[m] for m in difflib.get_close_matches(name.lower(), list(lower), n=1)
        ]
    return f" (did you mean {match[0]!r}?)" if match else ""


def unknown_key(where: str, key, allowed) -> ConfigError:
    """The error for a key that is not allowed at `where`, with a suggestion and the allowed keys."""
    allowed = sorted(str(a) for a in allowed)
    return ConfigError(f"{where}: unknown key {key!r}{did_you_mean(key, allowed)}; allowed: {allowed}")
