"""A run's tasks and their data: the task definitions the config resolves (each with the length it
is trained at, plus kd.unlabeled's pseudo-tasks), tokenizers, the encoded splits (mtkd.data's
cache, written atomically: nothing here is a collective), the caps, the training and dev sets a
stage reads, and what a stage's identity records about them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from mtkd import unlabeled
from mtkd.config import RunConfig, task_specs
from mtkd.data import EncodedSplit, TrainSet, encode_split, subsample, tokenizer_fingerprint
from mtkd.encoders import resolve_encoder


class TaskData:
    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        # every task carries the length it is trained at (its own max_seq_len, else data.max_seq_len),
        # so the models saved from this run record it and predict uses it
        self.specs = {n: s if s.max_seq_len is not None else s.model_copy(update={"max_seq_len": cfg.data.max_seq_len})
                      for n, s in task_specs(cfg).items()}
        self.specs.update(unlabeled.specs(cfg, self.specs))
        self.cache_dir = Path(cfg.data.cache_dir or os.environ.get("MTKD_CACHE") or Path.home() / ".cache" / "mtkd")
        self._encoded: dict = {}
        self._tokenizers: dict = {}
        self._fingerprints: dict = {}  # id(tokenizer) -> (tokenizer, fingerprint)

    def tokenizer(self, source: str | None = None):
        """The tokenizer of an encoder name or a model folder (default: the config's encoder)."""
        source = str(source or self.cfg.encoder.name)
        if source not in self._tokenizers:
            from transformers import AutoTokenizer

            self._tokenizers[source] = AutoTokenizer.from_pretrained(resolve_encoder(source), use_fast=True)
        return self._tokenizers[source]

    def encoded(self, task: str, split: str, tokenizer=None) -> EncodedSplit:
        """A split tokenised by `tokenizer` (a tokenizer, an encoder name or a model folder; default:
        the config's encoder)."""
        tok = tokenizer if hasattr(tokenizer, "backend_tokenizer") else self.tokenizer(tokenizer)
        if id(tok) not in self._fingerprints:  # costly (the vocabulary is serialised); the tokenizer
            self._fingerprints[id(tok)] = (tok, tokenizer_fingerprint(tok))  # is kept so its id stays its own
        key = (task, split, self._fingerprints[id(tok)][1])
        if key not in self._encoded:
            self._encoded[key] = encode_split(self.specs[task], split, tok, self.max_len(task, split),
                                              self.cache_dir, self.cfg.data.root)
        return self._encoded[key]

    def max_len(self, task: str, split: str) -> int:
        """The length a split is cut at: the split's max_seq_len, else the task's, else data.max_seq_len."""
        return self.specs[task].max_len_for(split, self.cfg.data.max_seq_len)

    def train_tasks(self) -> list[str]:
        """Tasks with labelled training data (not AX, not the unlabeled-text pseudo-tasks)."""
        return [t for t, s in self.specs.items() if "train" in s.splits and s.head_of is None]

    def cap(self, task: str, key: str) -> int | None:
        """The config's train_cap / dev_cap of a task (None: every row)."""
        opts = self.cfg.tasks.get(task)
        return getattr(opts, key) if opts is not None else None

    def train_set(self, task: str, tokenizer=None) -> TrainSet:
        """A task's training examples: the seeded train_cap subset (all rows without a cap); for an
        unlabeled pseudo-task read from its task's file, the rows that subset leaves out
        (mtkd.unlabeled.unused_rows)."""
        data = self.encoded(task, "train", tokenizer)
        if unlabeled.from_train(self.cfg, task) is not None:
            return unlabeled.unused_rows(self, task, data, tokenizer)
        return TrainSet(data, subsample(len(data), self.cap(task, "train_cap"), self.cfg.data.cap_seed))

    def dev_sets(self, task: str, tokenizer=None) -> dict[str, tuple[EncodedSplit, np.ndarray]]:
        """report name (MNLI-m, ...) -> (encoded dev split, indices after dev_cap)."""
        out = {}
        for split in self.specs[task].eval_splits("dev"):
            data = self.encoded(task, split, tokenizer)
            out[self.specs[task].report_name(split)] = (
                data, subsample(len(data), self.cap(task, "dev_cap"), self.cfg.data.cap_seed))
        return out

    def data_identity(self, task: str, split: str, tokenizer=None) -> dict:
        """What a stage reading this split depends on: file contents, tokenisation, the task's
        definition (head, labels, fields, head dropout) and, for training, the subset drawn."""
        data, spec = self.encoded(task, split, tokenizer), self.specs[task]
        ident = {"sha256": data.fingerprint, "tokenizer": data.meta["tokenizer_fingerprint"],
                 "max_len": data.meta["max_len"], "head": spec.head.value, "labels": list(spec.labels),
                 "fields": spec.fields_for(split), "head_dropout": spec.dropout,
                 "positive_label": getattr(spec, "positive_label", None)}
        if split == "train":
            ident.update(cap=self.cap(task, "train_cap"), cap_seed=self.cfg.data.cap_seed)
            ident.update(unlabeled.train_identity(self, task))
        return ident
