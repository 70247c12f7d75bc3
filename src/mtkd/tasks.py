"""Task definitions: what a task's files look like, what its output layer predicts, how it is scored.

A task is one record (`TaskSpec`). The GLUE tasks are defined in `glue_tasks.yaml`, in the same
format a user writes for a custom task, so there is one way to define a task.
"""

from __future__ import annotations

import copy
import difflib
import re
from dataclasses import dataclass, field
from enum import Enum
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from mtkd.errors import ConfigError


class HeadKind(str, Enum):
    """The kind of output layer on top of the shared encoder (paper Section 2, output layers)."""

    CLASSIFICATION = "classification"  # softmax over labels, cross-entropy (Eq. 1-2)
    REGRESSION = "regression"  # one score, mean squared error (STS-B)
    RANKING = "ranking"  # one relevance score per (query, candidate); listwise softmax per query


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

    @property
    def num_outputs(self) -> int:
        return len(self.labels) if self.head == HeadKind.CLASSIFICATION else 1

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
        d = {
            "head": self.head.value,
            "fields": dict(self.fields),
            "labels": list(self.labels),
            "metrics": list(self.metrics),
            "dropout": self.dropout,
            "splits": {},
        }
        for k in ("head_of", "label_range", "note", "positive_label"):
            v = getattr(self, k)
            if v is not None:
                d[k] = list(v) if isinstance(v, tuple) else v
        for name, s in self.splits.items():
            sd: dict[str, Any] = {"path": s.path, "format": s.format.value}
            if s.columns is not None:
                sd["columns"] = list(s.columns)
            if s.fields is not None:
                sd["fields"] = dict(s.fields)
            if s.skip_malformed:
                sd["skip_malformed"] = True
            if s.report_as is not None:
                sd["report_as"] = s.report_as
            d["splits"][name] = sd
        return d


def _closest(key: str, options) -> str:
    m = difflib.get_close_matches(key, list(options), n=1)
    return f" (did you mean {m[0]!r}?)" if m else ""


def _check_keys(d: dict, allowed, where: str) -> None:
    for k in d:
        if k not in allowed:
            raise ConfigError(f"{where}: unknown key {k!r}{_closest(k, allowed)}; allowed: {sorted(allowed)}")


def _enum(cls, value, where):
    try:
        return cls(value)
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is not one of {[e.value for e in cls]}") from None


_SPLIT_KEYS = {"path", "format", "columns", "fields", "skip_malformed", "report_as"}
_TASK_KEYS = {"head", "fields", "splits", "labels", "metrics", "dropout", "head_of", "label_range", "note",
              "positive_label"}


def task_from_dict(name: str, d: dict[str, Any], where: str = "task definition") -> TaskSpec:
    """Build and validate a TaskSpec from its YAML form (see glue_tasks.yaml)."""
    check_name(name, f"{where}: task name")
    where = f"{where}: task {name!r}"
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__}")
    _check_keys(d, _TASK_KEYS, where)
    for req in ("head", "fields", "splits"):
        if req not in d:
            raise ConfigError(f"{where}: missing required key {req!r}")
    head = _enum(HeadKind, d["head"], f"{where}, field 'head'")
    fields = d["fields"]
    if not isinstance(fields, dict):
        raise ConfigError(f"{where}, field 'fields': expected a mapping of {FIELD_ROLES} to column names")
    _check_keys(fields, FIELD_ROLES, f"{where}, field 'fields'")
    if "text_a" not in fields:
        raise ConfigError(f"{where}, field 'fields': 'text_a' is required")
    labels = tuple(str(x) for x in d.get("labels") or ())
    if head == HeadKind.CLASSIFICATION and len(labels) < 2:
        raise ConfigError(f"{where}, field 'labels': a classification task needs at least 2 label names")
    if len(set(labels)) != len(labels):
        raise ConfigError(f"{where}, field 'labels': duplicate label names {list(labels)}")
    positive = _positive_label(head, labels, d.get("positive_label"), where)
    if head == HeadKind.RANKING and not labels:
        labels = ("0", "1")
    metrics = tuple(d.get("metrics") or ())
    for m in metrics:
        if m not in METRICS:
            raise ConfigError(f"{where}, field 'metrics': unknown metric {m!r}{_closest(m, METRICS)}")
    splits: dict[str, SplitSource] = {}
    raw_splits = d["splits"] or {}
    if not isinstance(raw_splits, dict):
        raise ConfigError(f"{where}, field 'splits': expected a mapping split-name -> file")
    for sname, sd in raw_splits.items():
        if sd is None:  # removed by an override
            continue
        check_name(sname, f"{where}, split name")
        swhere = f"{where}, split {sname!r}"
        if isinstance(sd, str):
            sd = {"path": sd}
        if not isinstance(sd, dict):
            raise ConfigError(f"{swhere}: expected a path or a mapping, got {type(sd).__name__} {sd!r}")
        _check_keys(sd, _SPLIT_KEYS, swhere)
        if "path" not in sd:
            raise ConfigError(f"{swhere}: missing 'path'")
        if sd.get("report_as") is not None:
            check_name(sd["report_as"], f"{swhere}, field 'report_as'")
        fmt = _enum(FileFormat, sd.get("format") or _guess_format(sd["path"]), f"{swhere}, field 'format'")
        sf = sd.get("fields")
        if sf is not None:
            if not isinstance(sf, dict):
                raise ConfigError(f"{swhere}, field 'fields': expected a mapping of {FIELD_ROLES} to column names")
            _check_keys(sf, FIELD_ROLES, f"{swhere}, field 'fields'")
        splits[sname] = SplitSource(
            path=str(sd["path"]),
            format=fmt,
            columns=tuple(sd["columns"]) if sd.get("columns") else None,
            fields=dict(sf) if sf is not None else None,
            skip_malformed=bool(sd.get("skip_malformed", False)),
            report_as=sd.get("report_as"),
        )
    dropout = d.get("dropout", 0.1)
    if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
        raise ConfigError(f"{where}, field 'dropout': expected a number in [0, 1), got {dropout!r}")
    lr = d.get("label_range")
    return TaskSpec(
        name=name,
        head=head,
        fields=dict(fields),
        splits=splits,
        labels=labels,
        metrics=metrics,
        dropout=float(dropout),
        head_of=d.get("head_of"),
        label_range=(float(lr[0]), float(lr[1])) if lr else None,
        note=d.get("note"),
        positive_label=positive,
    )


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


def load_task_specs(entries: dict[str, dict | None], tasks_file: str | Path | None = None) -> dict[str, TaskSpec]:
    """Resolve a config's task entries: built-in GLUE definitions (or those of `tasks_file`), each
    merged with the entry's overrides (e.g. other files for a split, or `dev_matched: null`)."""
    defs = _glue_raw()
    from_file: dict[str, str] = {}  # task -> the tasks_file defining it (named in errors)
    if tasks_file is not None:
        p = Path(tasks_file)
        if not p.is_file():
            raise ConfigError(f"tasks_file {str(p)!r} does not exist")
        user = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        if not isinstance(user, dict):
            raise ConfigError(f"{p}: expected a mapping task-name -> definition")
        for name in user:
            check_name(name, f"tasks_file {str(p)!r}: task name")
            from_file[name] = str(p)
        defs.update(user)
    specs = {}
    for name, override in entries.items():
        check_name(name, "tasks: task name")
        if name not in defs:
            raise ConfigError(f"task {name!r} is neither a GLUE task nor defined in tasks_file{_closest(name, defs)}")
        specs[name] = task_from_dict(name, _merge(defs[name], override or {}),
                                     f"tasks.{name}" + (f" (defined in {from_file[name]})" if name in from_file else ""))
    for spec in specs.values():
        if spec.head_of and spec.head_of not in specs:
            raise ConfigError(f"task {spec.name!r} uses the head of {spec.head_of!r}, which is not in the task list")
    return specs
