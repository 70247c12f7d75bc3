"""Task definitions: what a task's files look like, what its output layer predicts, how it is scored.

A task is one record (`TaskSpec`). The GLUE tasks are defined in `glue_tasks.yaml`, in the same
format a user writes for a custom task, so there is one way to define a task.
"""

from __future__ import annotations

import copy
import math
import re
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BeforeValidator, Field, field_validator, model_serializer, model_validator

from mtkd.errors import ConfigError, did_you_mean, unknown_key
from mtkd.heads import KINDS, HeadKind, kind_of
from mtkd.schema import Schema, from_dict, load_yaml, read_yaml_mapping, refuse, to_dict


class FileFormat(str, Enum):
    TSV = "tsv"  # tab separated, no quoting (the GLUE files)
    CSV = "csv"  # comma separated, RFC 4180 quoting
    JSONL = "jsonl"  # one JSON object per line
    JSON = "json"  # one JSON object {id: {field: value}} or a list of objects


FieldRole = Literal["id", "text_a", "text_b", "label"]
FIELD_ROLES = get_args(FieldRole)
METRICS = ("accuracy", "f1", "mcc", "pearson", "spearman")
# Task names, split names and report_as values become file and folder names (DIR/finetune/<task>,
# <report_as>.tsv, caches, soft targets): letters, digits and . _ + - only, not starting with a
# symbol ('+' for the pseudo-tasks such as SST-2+unlabeled).
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
# the splits a run reads: train; dev and dev_<name> (scored, one report each); test and test_<name> (predicted)
SPLIT_NAME = re.compile(r"train|(dev|test)(_[A-Za-z0-9][A-Za-z0-9._+-]*)?")
MIN_SEQ_LEN = 8  # as data.max_seq_len: [CLS], [SEP] and a few tokens
SEQ_LEN = f"an integer >= {MIN_SEQ_LEN} (tokens)"


def name_problem(name) -> str | None:
    """Why `name` would not be a plain file name (a path, '..', spaces, control characters), if it would not."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        return (f"{name!r} is not a valid name: use letters, digits and . _ + - (starting with a letter or digit); "
                f"it becomes a file name")
    return None


def check_name(name, where: str) -> str:
    """Refuse a name that would not be a plain file name."""
    if name_problem(name):
        raise ConfigError(f"{where}: {name_problem(name)}")
    return name


def _safe_name(name: str) -> str:
    if name_problem(name):
        raise refuse(name_problem(name))
    return name


SafeName = Annotated[str, AfterValidator(_safe_name)]
Label = Annotated[str, BeforeValidator(str)]  # label names are text: YAML's 0 and 1 are "0" and "1"


def _columns(fields):
    """A `fields` mapping names a column (a non-empty string) for each field role."""
    for role, column in fields.items() if isinstance(fields, dict) else ():
        if not isinstance(column, str) or not column:
            raise refuse(f"{role} must name a column (a string), got {column!r}")
    return fields


def _absent_is_empty(value):
    return () if value is None else value


class SplitSource(Schema, frozen=True):
    """One file of a task: where it is, how it is laid out, which column plays which role. Written
    as a bare path or a mapping; the format defaults to the path's suffix, else TSV."""

    path: str
    format: FileFormat = Field(FileFormat.TSV, strict=False)
    columns: tuple[str, ...] | None = Field(None, strict=False)  # column names of a header-less file
    fields: dict[FieldRole, str] | None = None  # overrides the task's field mapping for this file
    skip_malformed: bool = False  # skip (and report) rows with a wrong number of fields
    report_as: SafeName | None = None  # name in results/submission (MNLI-m); default: the task name
    max_seq_len: int | None = Field(None, ge=MIN_SEQ_LEN, description=SEQ_LEN)  # default: the task's

    _check_columns = field_validator("fields", mode="before")(_columns)

    @model_validator(mode="before")
    @classmethod
    def _path_or_mapping(cls, data):
        if isinstance(data, str):
            data = {"path": data}
        if not isinstance(data, dict):
            raise refuse(f"expected a path or a mapping, got {type(data).__name__} {data!r}")
        if data.get("format") is None and isinstance(data.get("path"), str):
            data = {**data, "format": _guess_format(data["path"])}
        return data

    @model_validator(mode="after")
    def _header_less_columns(self):
        if self.columns is not None:
            if self.format not in (FileFormat.TSV, FileFormat.CSV):
                raise refuse(f"only a TSV or CSV file without a header line has columns (format is "
                             f"{self.format.value}: JSON records name their fields)", at=("columns",))
            if not self.columns or not all(self.columns) or len(set(self.columns)) != len(self.columns):
                raise refuse(f"expected distinct column names, one per field of the header-less file, got "
                             f"{list(self.columns)!r}", at=("columns",))
        return self

    @model_serializer(mode="wrap")
    def _yaml_form(self, handler):
        """path and format, then only the keys that differ from their defaults."""
        return {k: v for k, v in handler(self).items() if k in ("path", "format") or v not in (None, False)}


class TaskSpec(Schema, frozen=True):
    """A task: head kind, label names, field mapping, metrics, files per split, head dropout."""

    name: str = Field(exclude=True)  # the key it is defined under, not a key of its definition
    head: HeadKind = Field(strict=False)
    fields: dict[FieldRole, str]
    labels: tuple[Label, ...] = Field((), strict=False)
    metrics: tuple[str, ...] = Field((), strict=False)
    dropout: float = Field(0.1, ge=0, lt=1)
    splits: dict[str, SplitSource]
    head_of: SafeName | None = None  # predict with another task's head (AX uses MNLI's)
    label_range: tuple[float, float] | None = None  # regression: clip predictions (STS-B: [0, 5])
    note: str | None = None  # shown next to this task's results (e.g. "dev is a train sample")
    positive_label: Label | None = None  # ranking: the label of a relevant candidate (QNLI: entailment)
    max_seq_len: int | None = Field(None, ge=MIN_SEQ_LEN, description=SEQ_LEN)  # default: data.max_seq_len

    _check_columns = field_validator("fields", mode="before")(_columns)
    _empty_lists = field_validator("labels", "metrics", mode="before")(_absent_is_empty)

    @field_validator("splits", mode="before")
    @classmethod
    def _split_names(cls, splits):
        """A split set to null (removed by an override) is left out; names are train, dev[_<name>], test[_<name>]."""
        if splits is None or not isinstance(splits, dict):
            return {} if splits is None else splits
        for name in splits:
            if name_problem(name):
                raise refuse(f"split name: {name_problem(name)}")
            if not SPLIT_NAME.fullmatch(name):
                raise refuse(f"split name {name!r}: a split is train, dev, dev_<name> (more evaluation sets) or test, "
                             f"test_<name>{did_you_mean(name, ('train', 'dev', 'test'))}")
        return {name: split for name, split in splits.items() if split is not None}

    @field_validator("label_range", mode="before")
    @classmethod
    def _low_high(cls, value):
        """[low, high], finite, low < high (predictions are clipped to it)."""
        if value is None:
            return None
        ok = isinstance(value, list) and len(value) == 2 and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        if not ok or value[0] >= value[1]:
            raise refuse(f"expected [low, high] with low < high, got {value!r}")
        return float(value[0]), float(value[1])

    @model_validator(mode="after")
    def _definition_rules(self):
        """text_a is mapped; labels are distinct; metrics are known; no two dev (or test) splits
        share a report name (results and submission files are keyed by it)."""
        if "text_a" not in self.fields:
            raise refuse("'text_a' is required", at=("fields",))
        if len(set(self.labels)) != len(self.labels):
            raise refuse(f"duplicate label names {list(self.labels)}", at=("labels",))
        for m in self.metrics:
            if m not in METRICS:
                raise refuse(f"unknown metric {m!r}{did_you_mean(m, METRICS)}", at=("metrics",))
        for prefix in ("dev", "test"):
            seen: dict[str, str] = {}
            for split in self.eval_splits(prefix):
                report = self.report_name(split)
                if report in seen:
                    raise refuse(f"splits {seen[report]!r} and {split!r} both report as {report!r}; give one of "
                                 f"them another report_as", at=("splits",))
                seen[report] = split
        return self

    @model_validator(mode="wrap")
    @classmethod
    def _head_kind_rules(cls, data, handler):
        """What the task's head kind asks of its definition: its defaults and its rules
        (mtkd.heads: `definition_defaults`, `definition_problem`)."""
        head = data.get("head") if isinstance(data, dict) else None
        if isinstance(head, str) and head in [k.value for k in KINDS]:  # else the schema refuses it
            data = KINDS[HeadKind(head)].definition_defaults(data)
        spec = handler(data)
        problem = KINDS[spec.head].definition_problem(spec)
        if problem:
            raise refuse(problem[1], at=(problem[0],))
        return spec

    # ------------------------------------------------------------------------------ reading
    def max_len_for(self, split: str, default: int) -> int:
        """The length a split is cut at: the split's own max_seq_len, else the task's, else `default`
        (the config's data.max_seq_len)."""
        src = self.splits.get(split)
        if src is not None and src.max_seq_len is not None:
            return src.max_seq_len
        return self.max_seq_len if self.max_seq_len is not None else default

    @property
    def num_outputs(self) -> int:
        return kind_of(self).num_outputs

    @property
    def positive_index(self) -> int:
        """Ranking: the index in `labels` of the label that marks a relevant candidate (the encoded
        labels are indices into `labels`)."""
        if self.positive_label is None:  # only ranking definitions have one
            raise ValueError(f"task {self.name!r} is not a ranking task with a positive_label")
        return self.labels.index(self.positive_label)

    @property
    def head_name(self) -> str:
        return self.head_of or self.name

    def fields_for(self, split: str) -> dict[str, str]:
        src = self.splits[split]
        return dict(src.fields) if src.fields is not None else dict(self.fields)

    def report_name(self, split: str) -> str:
        return self.splits[split].report_as or self.name

    def eval_splits(self, prefix: str) -> list[str]:
        """Split names starting with `prefix` ('dev' or 'test'), in definition order."""
        return [s for s in self.splits if s.startswith(prefix)]

    def to_dict(self) -> dict[str, Any]:
        """The YAML form (as in glue_tasks.yaml), defaults filled in; the optional keys when set."""
        return {k: v for k, v in to_dict(self).items() if v is not None}


_TASK_KEYS = {k for k, f in TaskSpec.model_fields.items() if not f.exclude}
_SPLIT_KEYS = set(SplitSource.model_fields)


def task_from_dict(name: str, d: dict[str, Any], where: str = "task definition") -> TaskSpec:
    """Build and validate a TaskSpec from its YAML form (see glue_tasks.yaml); a refusal names
    `where`, the task, the split and the key."""
    check_name(name, f"{where}: task name")
    where = f"{where}: task {name!r}"
    if isinstance(d, dict) and "name" in d:
        raise unknown_key(where, "name", _TASK_KEYS)
    return from_dict(TaskSpec, {**d, "name": name} if isinstance(d, dict) else d, where, task_style=True)


def _guess_format(path: str) -> str:
    suffix = Path(path).suffix.lower().lstrip(".")
    return suffix if suffix in {f.value for f in FileFormat} else "tsv"


# ------------------------------------------------------------------------------ a config's task entries
class TaskOptions(Schema, extra="allow"):
    """A config's `tasks.<name>` entry: the run's options for the task and, beside them, changes to
    its definition (`override`: task keys, merged into the definition by load_task_specs). The keys
    are checked here, named by their key path in the config; the values with the merged definition."""

    train_cap: int | None = Field(None, ge=1)  # use a seeded random subset of at most this many training examples
    dev_cap: int | None = Field(None, ge=1)

    @property
    def override(self) -> dict:
        """The changes to the task definition (splits, note, dropout, ...)."""
        return dict(self.model_extra)

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, entry):
        if entry is None:  # `RTE:` is an entry with no changes
            return {}
        if isinstance(entry, dict):
            _check_entry_keys(entry)
        return entry


def task_option_keys() -> tuple[str, ...]:
    """The keys of a config's `tasks.<name>` entry that are options of the run, not task keys."""
    return tuple(TaskOptions.model_fields)


def _check_entry_keys(entry: dict) -> None:
    """An entry's keys are the run's options or task keys; each split's keys split keys; each
    `fields` mapping's keys field roles (the first other key is refused)."""
    mappings = [((), entry, _TASK_KEYS | set(TaskOptions.model_fields))]
    if isinstance(entry.get("fields"), dict):
        mappings.append((("fields",), entry["fields"], FIELD_ROLES))
    splits = entry.get("splits")
    for split_name, split_def in splits.items() if isinstance(splits, dict) else ():
        if isinstance(split_def, dict):
            mappings.append((("splits", split_name), split_def, _SPLIT_KEYS))
            if isinstance(split_def.get("fields"), dict):
                mappings.append((("splits", split_name, "fields"), split_def["fields"], FIELD_ROLES))
    for at, mapping, allowed in mappings:
        for key in mapping:
            if key not in allowed:
                raise refuse("unknown key", at, key=key, allowed=list(allowed))


# ------------------------------------------------------------------------------ resolving a task list
GLUE_TASK_NAMES = ("CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI", "RTE", "WNLI", "AX")


def _glue_raw() -> dict[str, Any]:
    return load_yaml(resources.files("mtkd").joinpath("glue_tasks.yaml").read_text(encoding="utf-8"))


def glue_tasks() -> dict[str, TaskSpec]:
    """The built-in GLUE task definitions (9 tasks + AX), by official name."""
    return {name: task_from_dict(name, d, "glue_tasks.yaml") for name, d in _glue_raw().items()}


def _merge(base: dict, override: dict) -> dict:
    """Deep-merge `override` into a copy of `base`; a None value removes the key."""
    out = copy.deepcopy(base)
    for k, v in override.items():
        if v is None:
            out.pop(k, None)
        elif isinstance(v, dict) and isinstance(out.get(k), dict) and k != "fields":
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def read_tasks_file(tasks_file: str | Path) -> dict[str, Any]:
    """The raw definitions of a tasks_file, by task name (names checked; definitions are checked
    when resolved, by load_task_specs)."""
    path = Path(tasks_file)
    user = read_yaml_mapping(path, "tasks_file", "a mapping task-name -> definition")
    for name in user:
        check_name(name, f"tasks_file {str(path)!r}: task name")
    return user


def load_task_specs(entries: dict[str, dict | None] | None,
                    tasks_file: str | Path | None = None) -> dict[str, TaskSpec]:
    """Resolve a config's task entries: built-in GLUE definitions (or those of `tasks_file`), each
    merged with the entry's overrides (e.g. other files for a split, or `dev_matched: null`); the
    run's options in an entry (train_cap, dev_cap) are not part of the definition and are left out.
    `entries` None: every task, GLUE's and the tasks_file's, as defined. (That a task's head_of is
    in the list is one of the config's rules: mtkd.config.validate.)"""
    defs = _glue_raw()
    from_file: dict[str, str] = {}  # task -> the tasks_file defining it (named in errors)
    if tasks_file is not None:
        user = read_tasks_file(tasks_file)
        from_file = dict.fromkeys(user, str(tasks_file))
        defs.update(user)
    if entries is None:
        entries = dict.fromkeys(defs)
    specs = {}
    for name, entry in entries.items():
        check_name(name, "tasks: task name")
        if name not in defs:
            raise ConfigError(f"task {name!r} is neither a GLUE task nor defined in tasks_file"
                              f"{did_you_mean(name, defs)}")
        override = from_dict(TaskOptions, entry, f"tasks.{name}").override  # the config's tasks.<name>
        base = defs[name]
        if isinstance(base, dict) and isinstance(base.get("splits"), dict):
            # a bare path becomes {path: ...}, so an override of that split merges into it
            base = {**base, "splits": {split_name: {"path": split_def} if isinstance(split_def, str) else split_def
                                       for split_name, split_def in base["splits"].items()}}
        where = f"tasks.{name}" + (f" (defined in {from_file[name]})" if name in from_file else "")
        specs[name] = task_from_dict(name, _merge(base, override) if isinstance(base, dict) else base, where)
    return specs
