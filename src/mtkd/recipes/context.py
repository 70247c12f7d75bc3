"""What every recipe needs: the resolved config, task definitions, tokenizer, encoded data, output
folders and the accelerator. Built once per `mtkd run`."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtkd.config import RunConfig, to_dict
from mtkd.data import EncodedSplit, encode_split, subsample
from mtkd.loop import TrainSet, make_accelerator
from mtkd.model import MTModel, resolve_encoder
from mtkd.errors import ConfigError
from mtkd.tasks import TaskSpec, load_task_specs, task_from_dict

log = logging.getLogger(__name__)


UNLABELED_SUFFIX = "+unlabeled"


def unlabeled_specs(cfg: RunConfig, specs: dict[str, TaskSpec]) -> dict[str, TaskSpec]:
    """kd.unlabeled entries as pseudo-tasks that share their task's head and have no labels."""
    out = {}
    for task, src in cfg.kd.unlabeled.items():
        if task not in specs:
            raise ConfigError(f"kd.unlabeled: task {task!r} is not in the task list {list(specs)}")
        if task not in cfg.kd.teacher_tasks:
            raise ConfigError(f"kd.unlabeled: task {task!r} has no teacher (kd.teacher_tasks) to label its text")
        if not isinstance(src, dict) or "path" not in src:
            raise ConfigError(f"kd.unlabeled.{task}: expected a mapping with 'path' (and optional format, fields)")
        base = specs[task]
        fields = src.get("fields") or {k: v for k, v in base.fields.items() if k in ("text_a", "text_b")}
        split = {k: v for k, v in src.items() if k != "fields"}
        name = f"{task}{UNLABELED_SUFFIX}"
        out[name] = task_from_dict(name, {"head": base.head.value, "labels": list(base.labels), "head_of": task,
                                          "fields": fields, "splits": {"train": split}}, "kd.unlabeled")
    return out


def default_cache_dir() -> Path:
    return Path(os.environ.get("MTKD_CACHE") or Path.home() / ".cache" / "mtkd")


@dataclass
class RunContext:
    cfg: RunConfig
    out_dir: Path
    specs: dict[str, TaskSpec] = field(init=False)
    accelerator: object = field(init=False)
    _encoded: dict = field(default_factory=dict, init=False)
    _tokenizer: object = field(default=None, init=False)

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        self.specs = load_task_specs({n: o.override for n, o in self.cfg.tasks.items()}, self.cfg.tasks_file)
        self.specs.update(unlabeled_specs(self.cfg, self.specs))
        self.accelerator = make_accelerator(self.cfg.mtl.precision)
        self.cache_dir = Path(self.cfg.data.cache_dir) if self.cfg.data.cache_dir else default_cache_dir()

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            from transformers import AutoTokenizer

            self._tokenizer = AutoTokenizer.from_pretrained(resolve_encoder(self.cfg.encoder.name), use_fast=True)
        return self._tokenizer

    # ----------------------------------------------------------------------------------- data
    def encoded(self, task: str, split: str) -> EncodedSplit:
        key = (task, split)
        if key not in self._encoded:
            with self.accelerator.main_process_first():  # rank 0 writes the cache, the others read it
                self._encoded[key] = encode_split(self.specs[task], split, self.tokenizer, self.cfg.data.max_seq_len,
                                                  self.cache_dir, self.cfg.data.root)
        return self._encoded[key]

    def train_tasks(self) -> list[str]:
        """Tasks with labelled training data (not AX, not the unlabeled-text pseudo-tasks)."""
        return [t for t, s in self.specs.items() if "train" in s.splits and s.head_of is None]

    def unlabeled_tasks(self) -> dict[str, str]:
        """pseudo-task (e.g. 'SST-2+unlabeled') -> the task whose head and teachers it uses."""
        return {f"{t}{UNLABELED_SUFFIX}": t for t in self.cfg.kd.unlabeled}

    def train_set(self, task: str) -> TrainSet:
        data = self.encoded(task, "train")
        return TrainSet(data, subsample(len(data), self._cap(task, 'train_cap'), self.cfg.data.cap_seed))

    def _cap(self, task: str, key: str) -> int | None:
        opts = self.cfg.tasks.get(task)
        return getattr(opts, key) if opts is not None else None

    def dev_sets(self, task: str) -> dict[str, tuple[EncodedSplit, np.ndarray]]:
        """report name (MNLI-m, ...) -> (encoded dev split, indices after dev_cap)."""
        out = {}
        for split in self.specs[task].eval_splits("dev"):
            data = self.encoded(task, split)
            out[self.specs[task].report_name(split)] = (data, subsample(len(data), self._cap(task, 'dev_cap'), self.cfg.data.cap_seed))
        return out

    def data_report(self) -> dict:
        """Per task: examples used / available per split, truncations, skipped rows, notes."""
        rep = {}
        for t, spec in self.specs.items():
            r = {"note": spec.note} if spec.note else {}
            for split in spec.splits:
                d = self.encoded(t, split)
                used = len(self.train_set(t).indices) if split == "train" else len(d)
                r[split] = {"file": d.meta["path"], "examples": len(d), "used": used,
                            "truncated": d.meta["n_truncated"], "skipped_rows": len(d.meta["skipped_rows"])}
            rep[t] = r
        return rep

    # ---------------------------------------------------------------------------------- model
    def new_model(self, dropout: float | None = None, encoder: str | None = None, encoder_cfg=None) -> MTModel:
        """A fresh MT-DNN from the config's encoder (or `encoder_cfg`, e.g. a smaller student);
        `dropout` and `encoder` override its shared-layer dropout and weights (teacher candidates)."""
        e = encoder_cfg or self.cfg.encoder
        return MTModel.from_encoder(encoder or e.name, self.specs, num_hidden_layers=e.num_hidden_layers,
                                    dropout=e.dropout if dropout is None else dropout, init=e.init)

    def load_model(self, folder: Path) -> MTModel:
        return MTModel.from_pretrained(folder, tasks=self.specs)

    # ------------------------------------------------------------------------------ stage done
    def config_hash(self, folder: Path) -> str:
        """Hash of the config sections a stage's result depends on (kd only for teach/distill)."""
        d = self.config_dict()
        keys = ["encoder", "data", "tasks", "tasks_file", "mtl", "finetune", "finetune_tasks"]
        if {"teach", "distill"} & set(Path(folder).parts):
            keys.append("kd")
        payload = {k: d[k] for k in keys}
        payload["data"] = {k: v for k, v in payload["data"].items() if k != "cache_dir"}
        return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]

    def stage_done(self, folder: Path) -> dict | None:
        """The finished stage's summary, or None. A stage finished under a different config is
        refused: reusing it would mix results of two experiments."""
        f = Path(folder) / "DONE.json"
        if not f.is_file():
            return None
        info = json.loads(f.read_text())
        if info.get("config_hash") not in (None, self.config_hash(folder)):
            raise ConfigError(f"{folder} was produced with a different config (encoder/data/tasks/training "
                              "settings changed); use a new --output-dir, or delete that folder to redo it")
        return info

    def mark_done(self, folder: Path, info: dict) -> None:
        if self.main:
            Path(folder).mkdir(parents=True, exist_ok=True)
            tmp = Path(folder) / "DONE.json.tmp"
            tmp.write_text(json.dumps({**info, "config_hash": self.config_hash(folder)}, indent=2))
            tmp.replace(Path(folder) / "DONE.json")
        self.accelerator.wait_for_everyone()

    def config_dict(self) -> dict:
        return to_dict(self.cfg)


class Timer:
    def __enter__(self):
        self.t0 = time.time()
        return self

    def __exit__(self, *exc):
        self.seconds = round(time.time() - self.t0, 1)
