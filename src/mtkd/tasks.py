"""Task definitions: what a task's files look like, what its output layer predicts, how it is scored.

A task is one record (`TaskSpec`). The GLUE tasks are defined in `glue_tasks.yaml`, in the same
format a user writes for a custom task, so there is one way to define a task.
"""

from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mtkd.errors import ConfigError, did_you_mean, unknown_key
from mtkd.heads import HeadKind, kind_of


class FileFormat(str, Enum):
    TSV = "tsv"  # tab separated, no quoting (the GLUE files)
    CSV = "csv"  # comma separated, RFC 4180 quoting
    JSONL = "jsonl"  # one JSON object per line
    JSON = "json"  # one JSON object {id: {field: value}} or a list of objects


FIELD_ROLES = ("id", "text_a", "text_b", "label")
METRICS = ("accuracy", "f1", "mcc", "pearson", "spearman")
# Task names, split names and report_as values become file and folder names (DIR/finetune/<task>,
# <report_as>.tsv, caches, soft targets): letters, digits and . _ + - only, not starting with a
# symbol ('+' for the pseudo-tasks such as SST-2+unlabeled).
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
# the splits a run reads: train; dev and dev_<name> (scored, one report each); test and test_<name> (predicted)
SPLIT_NAME = re.compile(r"train|(dev|test)(_[A-Za-z0-9][A-Za-z0-9._+-]*)?")


def check_name(name, where: str) -> str:
    """Refuse a name that would not be a plain file name (a path, '..', spaces, control characters)."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name):
        raise ConfigError(f"{where}: {name!r} is not a valid name: use letters, digits and . _ + - "
                          f"(starting with a letter or digit); it becomes a file name")
    return name


@dataclass(frozen=True)
class SplitSource:
    """One file of a task: where it is, how it is laid out, which column plays which role."""

    path: str
    format: FileFormat = FileFormat.TSV
    columns: tuple[str, ...] | None = None  # column names of a header-less file
    fields: dict[str, str] | None = None  # overrides the task's field mapping for this file
    skip_malformed: bool = False  # skip (and report) rows with a wrong number of fields
    report_as: str | None = None  # name in results/submission (MNLI-m); default: the task name
    max_seq_len: int | None = None  # tokens kept of this file's examples; default: the task's


@dataclass(frozen=True)
class TaskSpec:
    """A task: head kind, label names, field mapping, metrics, files per split, head dropout."""

    name: str
    head: HeadKind
    fields: dict[str, str]
    splits: dict[str, SplitSource]
    labels: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    dropout: float = 0.1
    head_of: str | None = None  # predict with another task's head (AX uses MNLI's)
    label_range: tuple[float, float] | None = None  # regression: clip predictions (STS-B: [0, 5])
    note: str | None = None  # shown next to this task's results (e.g. "dev is a train sample")
    positive_label: str | None = None  # ranking: the label of a relevant candidate (QNLI: entailment)
    max_seq_len: int | None = None  # tokens kept per example; default: the config's data.max_seq_len

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
        if self.head != HeadKind.RANKING or self.positive_label is None:
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
        out = {
            "head": self.head.value,
            "fields": dict(self.fields),
            "labels": list(self.labels),
            "metrics": list(self.metrics),
            "dropout": self.dropout,
            "splits": {},
        }
        for k in ("head_of", "label_range", "note", "positive_label", "max_seq_len"):
            v = getattr(self, k)
            if v is not None:
                out[k] = list(v) if isinstance(v, tuple) else v
        for name, src in self.splits.items():
            split_dict: dict[str, Any] = {"path": src.path, "format": src.format.value}
            if src.columns is not None:
                split_dict["columns"] = list(src.columns)
            if src.fields is not None:
                split_dict["fields"] = dict(src.fields)
            if src.skip_malformed:
                split_dict["skip_malformed"] = True
            if src.report_as is not None:
                split_dict["report_as"] = src.report_as
            if src.max_seq_len is not None:
                split_dict["max_seq_len"] = src.max_seq_len
            out["splits"][name] = split_dict
        return out


def _check_keys(d: dict, allowed, where: str) -> None:
    for k in d:
        if k not in allowed:
            raise unknown_key(where, k, allowed)


def _enum(cls, value, where):
    try:
        return cls(value)
    except ValueError:
        values = [e.value for e in cls]
        raise ConfigError(f"{where}: {value!r} is not one of {values}{did_you_mean(value, values)}") from None


_SPLIT_KEYS = {"path", "format", "columns", "fields", "skip_malformed", "report_as", "max_seq_len"}
_TASK_KEYS = {"head", "fields", "splits", "labels", "metrics", "dropout", "head_of", "label_range", "note",
              "positive_label", "max_seq_len"}

_REGRESSION_METRICS = ("pearson", "spearman")
MIN_SEQ_LEN = 8  # as data.max_seq_len: [CLS], [SEP] and a few tokens


def _max_seq_len(value, where: str) -> int | None:
    """A task's or split's max_seq_len: absent, or an integer >= MIN_SEQ_LEN."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < MIN_SEQ_LEN:
        raise ConfigError(f"{where}, field 'max_seq_len': expected an integer >= {MIN_SEQ_LEN} (tokens), got {value!r}")
    return value


def task_from_dict(name: str, d: dict[str, Any], where: str = "task definition") -> TaskSpec:
    """Build and validate a TaskSpec from its YAML form (see glue_tasks.yaml). The checks run in a
    fixed order (keys, head, fields, labels, metrics, splits, the rest), so one definition with
    several mistakes is always blamed for the same one."""
    check_name(name, f"{where}: task name")
    where = f"{where}: task {name!r}"
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    _check_keys(d, _TASK_KEYS, where)
    for req in ("head", "fields", "splits"):
        if req not in d:
            raise ConfigError(f"{where}: missing required key {req!r}")
    head = _enum(HeadKind, d["head"], f"{where}, field 'head'")
    fields = _fields_mapping(d["fields"], f"{where}, field 'fields'")
    if "text_a" not in fields:
        raise ConfigError(f"{where}, field 'fields': 'text_a' is required")
    labels = tuple(str(x) for x in _list(d.get("labels"), f"{where}, field 'labels'"))
    if head == HeadKind.CLASSIFICATION and len(labels) < 2:
        raise ConfigError(f"{where}, field 'labels': a classification task needs at least 2 label names")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{where}, field 'labels': duplicate label names {list(labels)}")
    positive = _positive_label(head, labels, d.get("positive_label"), where)
    if head == HeadKind.RANKING and not labels:
        labels = ("0", "1")
    metrics = _metrics(head, labels, d.get("metrics"), f"{where}, field 'metrics'")
    splits = _splits(d["splits"], name, where)
    dropout = d.get("dropout", 0.1)
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"{where}, field 'dropout': expected a number in [0, 1), got {dropout!r}")
    label_range = _label_range(head, d.get("label_range"), f"{where}, field 'label_range'")
    for key in ("note", "head_of"):
        if d.get(key) is not None and not isinstance(d[key], str):
            raise ConfigError(f"{where}, field {key!r}: expected a string, got {type(d[key]).__name__} {d[key]!r}")
    if d.get("head_of") is not None:
        check_name(d["head_of"], f"{where}, field 'head_of'")
    return TaskSpec(
        name=name,
        head=head,
        fields=dict(fields),
        splits=splits,
        labels=labels,
        metrics=metrics,
        dropout=float(dropout),
        head_of=d.get("head_of"),
        label_range=label_range,
        note=d.get("note"),
        positive_label=positive,
        max_seq_len=_max_seq_len(d.get("max_seq_len"), where),
    )


def _fields_mapping(fields, where: str) -> dict:
    """A task's or split's `fields`: a mapping of field roles to column names."""
    if not isinstance(fields, dict):
        raise ConfigError(f"{where}: expected a mapping of {FIELD_ROLES} to column names")
    _check_keys(fields, FIELD_ROLES, where)
    _check_columns(fields, where)
    return fields


def _metrics(head: HeadKind, labels: tuple[str, ...], value, where: str) -> tuple[str, ...]:
    """A task's metrics: known names that score its head kind (f1 only with exactly 2 labels)."""
    metrics = tuple(_list(value, where))
    for m in metrics:
        if m not in METRICS:
            raise ConfigError(f"{where}: unknown metric {m!r}{did_you_mean(m, METRICS)}")
        fits = m in _REGRESSION_METRICS if head == HeadKind.REGRESSION else m not in _REGRESSION_METRICS
        if not fits:
            allowed = [x for x in METRICS if (x in _REGRESSION_METRICS) == (head == HeadKind.REGRESSION)]
            raise ConfigError(f"{where}: {m!r} does not score a {head.value} task; use {allowed}")
        if m == "f1" and head == HeadKind.CLASSIFICATION and len(labels) != 2:
            raise ConfigError(f"{where}: f1 scores a task with 2 labels (the second is the positive "
                              f"class), this one has {len(labels)}")
    return metrics


def _splits(raw_splits, task_name: str, where: str) -> dict[str, SplitSource]:
    """A task's `splits`: {split name: SplitSource}; a split set to None (removed by an override)
    is left out, and no two dev (or test) splits may share a report name."""
    raw_splits = raw_splits or {}
    if not isinstance(raw_splits, dict):
        raise ConfigError(f"{where}, field 'splits': expected a mapping split-name -> file")
    splits: dict[str, SplitSource] = {}
    for split_name, split_def in raw_splits.items():
        if split_def is None:  # removed by an override
            continue
        check_name(split_name, f"{where}, split name")
        if not SPLIT_NAME.fullmatch(split_name):
            raise ConfigError(f"{where}, split name {split_name!r}: a split is train, dev, dev_<name> (more evaluation "
                              f"sets) or test, test_<name>{did_you_mean(split_name, ('train', 'dev', 'test'))}")
        splits[split_name] = _split_source(split_def, f"{where}, split {split_name!r}")
    for prefix in ("dev", "test"):  # results and submission files are keyed by report name
        seen: dict[str, str] = {}
        for split_name, src in splits.items():
            if split_name.startswith(prefix):
                report = src.report_as or task_name
                if report in seen:
                    raise ConfigError(f"{where}, field 'splits': splits {seen[report]!r} and {split_name!r} both "
                                      f"report as {report!r}; give one of them another report_as")
                seen[report] = split_name
    return splits


def _split_source(split_def, where: str) -> SplitSource:
    """One split's definition: a bare path, or a mapping of _SPLIT_KEYS."""
    if isinstance(split_def, str):
        split_def = {"path": split_def}
    if not isinstance(split_def, dict):
        raise ConfigError(f"{where}: expected a path or a mapping, got {type(split_def).__name__} {split_def!r}")
    _check_keys(split_def, _SPLIT_KEYS, where)
    if "path" not in split_def:
        raise ConfigError(f"{where}: missing 'path'")
    if split_def.get("report_as") is not None:
        check_name(split_def["report_as"], f"{where}, field 'report_as'")
    fmt = _enum(FileFormat, split_def.get("format") or _guess_format(split_def["path"]), f"{where}, field 'format'")
    split_fields = split_def.get("fields")
    if split_fields is not None:
        _fields_mapping(split_fields, f"{where}, field 'fields'")
    columns = split_def.get("columns")
    if columns is not None:
        columns = _list(columns, f"{where}, field 'columns'")
        if fmt not in (FileFormat.TSV, FileFormat.CSV):
            raise ConfigError(f"{where}, field 'columns': only a TSV or CSV file without a header line has "
                              f"columns (format is {fmt.value}: JSON records name their fields)")
        if not columns or not all(isinstance(c, str) and c for c in columns) or len(set(columns)) != len(columns):
            raise ConfigError(f"{where}, field 'columns': expected distinct column names, one per field of "
                              f"the header-less file, got {columns!r}")
    if not isinstance(split_def.get("skip_malformed", False), bool):
        raise ConfigError(f"{where}, field 'skip_malformed': expected true or false, got {split_def['skip_malformed']!r}")
    return SplitSource(
        path=str(split_def["path"]),
        format=fmt,
        columns=tuple(columns) if columns else None,
        fields=dict(split_fields) if split_fields is not None else None,
        skip_malformed=bool(split_def.get("skip_malformed", False)),
        report_as=split_def.get("report_as"),
        max_seq_len=_max_seq_len(split_def.get("max_seq_len"), where),
    )


def _list(value, where: str) -> list:
    """A list-valued key (labels, metrics, columns): absent is empty; a bare string is refused
    (it would be read letter by letter)."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
    return value


def _check_columns(fields: dict, where: str) -> None:
    for role, col in fields.items():
        if not isinstance(col, str) or not col:
            raise ConfigError(f"{where}: {role} must name a column (a string), got {col!r}")


def _label_range(head: HeadKind, value, where: str) -> tuple[float, float] | None:
    """Regression only: [low, high], finite, low < high (predictions are clipped to it)."""
    if value is None:
        return None
    if head != HeadKind.REGRESSION:
        raise ConfigError(f"{where}: only regression tasks have one (head is {head.value})")
    ok = isinstance(value, list) and len(value) == 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    if not ok or value[0] >= value[1]:
        raise ConfigError(f"{where}: expected [low, high] with low < high, got {value!r}")
    return float(value[0]), float(value[1])


def _positive_label(head: HeadKind, labels: tuple[str, ...], value, where: str) -> str | None:
    """Ranking tasks name the label of a relevant candidate. Without `labels` a ranking task's
    labels are ["0", "1"] and the positive is "1"; with `labels` (exactly two names, e.g. QNLI's
    [entailment, not_entailment]) `positive_label` is required. Other heads have none."""
    if head != HeadKind.RANKING:
        if value is not None:
            raise ConfigError(f"{where}, field 'positive_label': only ranking tasks have one (head is {head.value})")
        return None
    if not labels:
        labels, value = ("0", "1"), "1" if value is None else value
    if len(labels) != 2:
        raise ConfigError(f"{where}, field 'labels': a ranking task has exactly 2 labels (relevant / not), got {list(labels)}")
    if value is None:
        raise ConfigError(f"{where}, field 'positive_label': a ranking task with labels {list(labels)} must say which "
                          f"one marks a relevant candidate, e.g. positive_label: {labels[0]}")
    if str(value) not in labels:
        raise ConfigError(f"{where}, field 'positive_label': {value!r} is not one of the labels {list(labels)}")
    return str(value)


def _guess_format(path: str) -> str:
    suffix = Path(path).suffix.lower().lstrip(".")
    return suffix if suffix in {f.value for f in FileFormat} else "tsv"


def _glue_raw() -> dict[str, Any]:
    text = resources.files("mtkd").joinpath("glue_tasks.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


GLUE_TASK_NAMES = ("CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI", "QNLI", "RTE", "WNLI", "AX")


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


def task_option_keys() -> tuple[str, ...]:
    """The keys of a config's `tasks.<name>` entry that are options of the run, not task keys
    (train_cap, dev_cap: config.TaskOptions)."""
    import dataclasses

    from mtkd.config import TaskOptions

    return tuple(f.name for f in dataclasses.fields(TaskOptions) if f.name != "override")


def check_task_entry(entry: dict, where: str) -> None:
    """The one check of a config's `tasks.<name>` entry, named by its key path `where` (so a typo
    made in the config is never blamed on the tasks file): its keys are the run's options
    (task_option_keys) or task keys, each split's keys split keys, each `fields` mapping field roles.
    What the entry does not change is the definition's, checked (and blamed on its file) by
    task_from_dict."""
    _check_keys(entry, _TASK_KEYS | set(task_option_keys()), where)
    if isinstance(entry.get("fields"), dict):
        _check_keys(entry["fields"], FIELD_ROLES, f"{where}.fields")
    splits = entry.get("splits")
    for split_name, split_def in (splits.items() if isinstance(splits, dict) else ()):
        if isinstance(split_def, dict):
            _check_keys(split_def, _SPLIT_KEYS, f"{where}.splits.{split_name}")
            if isinstance(split_def.get("fields"), dict):
                _check_keys(split_def["fields"], FIELD_ROLES, f"{where}.splits.{split_name}.fields")


def read_tasks_file(tasks_file: str | Path) -> dict[str, Any]:
    """The raw definitions of a tasks_file, by task name (names checked; definitions are checked
    when resolved, by load_task_specs)."""
    from mtkd.config import read_yaml_mapping  # here, not at the top: config imports this module

    path = Path(tasks_file)
    user = read_yaml_mapping(path, "tasks_file", "a mapping task-name -> definition")
    for name in user:
        check_name(name, f"tasks_file {str(path)!r}: task name")
    return user


def load_task_specs(entries: dict[str, dict | None] | None, tasks_file: str | Path | None = None) -> dict[str, TaskSpec]:
    """Resolve a config's task entries: built-in GLUE definitions (or those of `tasks_file`), each
    merged with the entry's overrides (e.g. other files for a split, or `dev_matched: null`); the
    run's options in an entry (train_cap, dev_cap) are not part of the definition and are left out.
    `entries` None: every task, GLUE's and the tasks_file's, as defined."""
    defs = _glue_raw()
    from_file: dict[str, str] = {}  # task -> the tasks_file defining it (named in errors)
    if tasks_file is not None:
        user = read_tasks_file(tasks_file)
        from_file = dict.fromkeys(user, str(tasks_file))
        defs.update(user)
    if entries is None:
        entries = dict.fromkeys(defs)
    specs = {}
    for name, override in entries.items():
        check_name(name, "tasks: task name")
        if name not in defs:
            raise ConfigError(f"task {name!r} is neither a GLUE task nor defined in tasks_file{did_you_mean(name, defs)}")
        if isinstance(override, dict):  # the config's tasks.<name>: its options or any task key
            check_task_entry(override, f"tasks.{name}")
            override = {k: v for k, v in override.items() if k not in task_option_keys()}
        base = defs[name]
        if isinstance(base, dict) and isinstance(base.get("splits"), dict):
            # a bare path becomes {path: ...}, so an override of that split merges into it
            base = {**base, "splits": {split_name: {"path": split_def} if isinstance(split_def, str) else split_def
                                       for split_name, split_def in base["splits"].items()}}
        specs[name] = task_from_dict(name, _merge(base, override or {}) if isinstance(base, dict) else base,
                                     f"tasks.{name}" + (f" (defined in {from_file[name]})" if name in from_file else ""))
    for spec in specs.values():
        if spec.head_of and spec.head_of not in specs:
            raise ConfigError(f"task {spec.name!r} uses the head of {spec.head_of!r}, which is not in the task list "
                              f"{list(specs)}{did_you_mean(spec.head_of, specs)}")
    return specs
