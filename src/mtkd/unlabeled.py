"""Unlabeled text (kd.unlabeled), beyond the paper: extra text of a teacher task T, labelled by T's
teachers and trained on (soft loss only) by a second student, "MT-DNN-KD + unlabeled text", beside
the paper's student, which never sees it. The text is a pseudo-task `T+unlabeled` sharing T's head,
read from a file ({path, format?, fields?}) or from the rows of T's training file that its
train_cap leaves unused ({from_train: true, cap: N}). Here: the pseudo-tasks, their rows and data
identity (for mtkd.task_data), their labelling in a sub-stage of teach (DIR/teach/unlabeled, keyed
by the teachers and the text, so the paper's student never retrains for it), and what the second
student adds (recipes.distill, recipes.pipeline).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mtkd.config import RunConfig, UnlabeledFromTrain
from mtkd.data import EncodedSplit, TrainSet, split_path, subsample
from mtkd.errors import ConfigError, DataError
from mtkd.tasks import TaskSpec, task_from_dict

SUFFIX = "+unlabeled"
LABELS_FOLDER = "unlabeled"  # the teach stage's sub-stage: DIR/teach/unlabeled/soft_targets
STUDENT = "mtdnn_kd_unlabeled"  # the second student's system in the report, and its folder seed-S/distill_unlabeled
STUDENT_FOLDER = "distill_unlabeled"


def pseudo_tasks(cfg: RunConfig) -> dict[str, str]:
    """pseudo-task (e.g. 'SST-2+unlabeled') -> the task whose head and teachers it uses."""
    return {f"{t}{SUFFIX}": t for t in cfg.kd.unlabeled}


def specs(cfg: RunConfig, specs: dict[str, TaskSpec]) -> dict[str, TaskSpec]:
    """kd.unlabeled entries (checked by mtkd.config.validate) as pseudo-tasks that share their task's
    head and have no labels."""
    out = {}
    for task, src in cfg.kd.unlabeled.items():
        name = f"{task}{SUFFIX}"
        base = specs[task]
        if isinstance(src, UnlabeledFromTrain):
            # the task's own training file, read as the task reads it (same rows, same ids) without
            # its labels; unused_rows keeps the rows its train_cap leaves unused
            fields = {k: v for k, v in base.fields_for("train").items() if k in ("text_a", "text_b", "id")}
            out[name] = base.model_copy(update=dict(
                name=name, head_of=task, fields=fields, metrics=(), note=None,
                splits={"train": base.splits["train"].model_copy(update=dict(fields=None, report_as=None))}))
            continue
        fields = src.fields or {k: v for k, v in base.fields.items() if k in ("text_a", "text_b")}
        split = src.model_copy(update=dict(fields=None))
        out[name] = task_from_dict(name, {"head": base.head.value, "labels": list(base.labels), "head_of": task,
                                          "fields": fields, "splits": {"train": split},
                                          "max_seq_len": base.max_seq_len}, "kd.unlabeled")  # cut as its task
    return out


def from_train(cfg: RunConfig, task: str) -> tuple[str, int | None] | None:
    """(base task, cap) of a pseudo-task read from its task's unused training rows
    (kd.unlabeled.<task>: {from_train: true, cap: N}); None for every other task."""
    base = pseudo_tasks(cfg).get(task)
    src = cfg.kd.unlabeled.get(base) if base is not None else None
    if isinstance(src, UnlabeledFromTrain):
        return base, src.cap
    return None


def unused_rows(data, task: str, encoded: EncodedSplit, tokenizer=None) -> TrainSet:
    """A from_train pseudo-task's training set (`data`: the run's TaskData): the rows of its task's
    file that the task's train_cap subset leaves out, at most `cap` of them (seeded by
    data.cap_seed), so no example is both labelled and unlabeled."""
    base, cap = from_train(data.cfg, task)
    labelled = data.train_set(base, tokenizer)
    if list(labelled.data.ids) != list(encoded.ids):  # the same file read the same way: cannot differ
        raise DataError(encoded.meta["path"], f"{task}: the rows read as unlabeled text differ from {base}'s "
                                              f"training rows")
    check_rows_left(data, task, len(encoded))
    unused = np.setdiff1d(np.arange(len(encoded), dtype=np.int64), labelled.indices)
    return TrainSet(encoded, unused[subsample(len(unused), cap, data.cfg.data.cap_seed)])


def check_rows_left(data, task: str, n_rows: int) -> None:
    """A pseudo-task read `from_train` needs rows its task's train_cap leaves out."""
    base = from_train(data.cfg, task)[0]
    cap = data.cap(base, "train_cap")
    if cap is None or cap >= n_rows:
        raise ConfigError(f"kd.unlabeled.{base}: from_train, but tasks.{base}.train_cap ({cap}) keeps all "
                          f"{n_rows} rows of {split_path(data.specs[base], 'train', data.cfg.data.root)}: "
                          f"no row is left unused")


def from_train_tasks(cfg: RunConfig) -> list[str]:
    """The pseudo-tasks read from their task's training file."""
    return [t for t in pseudo_tasks(cfg) if from_train(cfg, t) is not None]


def train_identity(data, task: str) -> dict:
    """What a from_train pseudo-task's training data adds to its data identity: the rows its task's
    train_cap leaves unused, at most `cap` ({} for every other task)."""
    source = from_train(data.cfg, task)
    if source is None:
        return {}
    return {"cap": source[1], "from_train": {"task": source[0], "train_cap": data.cap(source[0], "train_cap")}}


def labelling_identity(data, teachers_key: str) -> dict:
    """What the soft targets of the text depend on: the teachers (the teach stage's key) and the text."""
    return {"teachers": teachers_key, "texts": {p: data.data_identity(p, "train") for p in pseudo_tasks(data.cfg)}}


def label(data, soft_targets, folder: Path, key: str, main: bool) -> dict:
    """Step 5 of the teach stage: each pseudo-task's text labelled by its task's ensemble
    (`soft_targets(task, pseudo-task, rows, **provenance)`, recipes.teach), written to
    `folder`/soft_targets by rank 0 with the sub-stage's `key` in their provenance."""
    examples = {}
    for name, task in pseudo_tasks(data.cfg).items():
        rows = data.train_set(name)
        targets = soft_targets(task, name, rows, unlabeled_key=key)
        examples[name] = len(rows.indices)
        if main:
            targets.save(folder / "soft_targets")
    return {"soft_targets": str(folder / "soft_targets"), "examples": examples}


def soft_tasks(cfg: RunConfig, labels: Path | None) -> dict[str, Path]:
    """pseudo-task -> its soft targets' folder, for a student given the text's labels (`labels`,
    DIR/teach/unlabeled/soft_targets); {} for the paper's student (None)."""
    return {p: labels for p in pseudo_tasks(cfg)} if labels is not None else {}
