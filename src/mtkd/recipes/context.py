"""What every recipe needs: the resolved config, the task definitions, tokenizers, encoded data
(with the caps applied), fresh or saved models on this rank's device, sharded inference, and the
run's stages (`stages`: identities and DONE markers, see recipes.stages). Built once per `mtkd run`.

Distributed runs: nothing here runs a collective except `logits` (sharded across ranks and
gathered); see recipes.inputs.prepare_data and Stages.mark_done for the others.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mtkd.config import RunConfig, UnlabeledFromTrain, to_dict
from mtkd.data import EncodedSplit, encode_split, split_path, subsample, tokenizer_fingerprint
from mtkd.errors import ConfigError, DataError
from mtkd.loop import TrainSet, autocast, make_accelerator, predict_logits
from mtkd.model import MTModel, resolve_encoder
from mtkd.recipes.stages import Stages
from mtkd.tasks import TaskSpec, load_task_specs, task_from_dict

log = logging.getLogger(__name__)


UNLABELED_SUFFIX = "+unlabeled"


def unlabeled_specs(cfg: RunConfig, specs: dict[str, TaskSpec]) -> dict[str, TaskSpec]:
    """kd.unlabeled entries as pseudo-tasks that share their task's head and have no labels."""
    out = {}
    for task, src in cfg.kd.unlabeled.items():  # checked by mtkd.config.validate
        name = f"{task}{UNLABELED_SUFFIX}"
        base = specs[task]
        if isinstance(src, UnlabeledFromTrain):
            # the task's own training file, read as the task reads it (same rows, same ids) without
            # its labels; RunContext.train_set keeps the rows its train_cap leaves unused
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


@dataclass
class RunContext:
    cfg: RunConfig
    out_dir: Path
    specs: dict[str, TaskSpec] = field(init=False)
    accelerator: object = field(init=False)
    stages: Stages = field(init=False)
    _encoded: dict = field(default_factory=dict, init=False)
    _tokenizers: dict = field(default_factory=dict, init=False)
    _fingerprints: dict = field(default_factory=dict, init=False)  # id(tokenizer) -> (tokenizer, fingerprint)

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        specs = load_task_specs({n: o.override for n, o in self.cfg.tasks.items()}, self.cfg.tasks_file)
        # every task carries the length it is trained at (its own max_seq_len, else data.max_seq_len),
        # so the models saved from this run record it and predict uses it
        self.specs = {n: s if s.max_seq_len is not None
                      else s.model_copy(update={"max_seq_len": self.cfg.data.max_seq_len}) for n, s in specs.items()}
        self.specs.update(unlabeled_specs(self.cfg, self.specs))
        self.accelerator = make_accelerator(self.cfg.mtl.precision)
        self.cache_dir = Path(self.cfg.data.cache_dir or os.environ.get("MTKD_CACHE") or Path.home() / ".cache" / "mtkd")
        self.stages = Stages(self.out_dir, self.accelerator)

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    # ------------------------------------------------------------------------------ tokenizers
    def tokenizer(self, source: str | None = None):
        """The tokenizer of an encoder name or a model folder (default: the config's encoder)."""
        source = str(source or self.cfg.encoder.name)
        if source not in self._tokenizers:
            from transformers import AutoTokenizer

            self._tokenizers[source] = AutoTokenizer.from_pretrained(resolve_encoder(source), use_fast=True)
        return self._tokenizers[source]

    # ----------------------------------------------------------------------------------- data
    def encoded(self, task: str, split: str, tokenizer=None) -> EncodedSplit:
        """A split tokenised by `tokenizer` (a tokenizer, an encoder name or a model folder; default:
        the config's encoder). Not a collective: the on-disk cache is written atomically."""
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

    def unlabeled_tasks(self) -> dict[str, str]:
        """pseudo-task (e.g. 'SST-2+unlabeled') -> the task whose head and teachers it uses."""
        return {f"{t}{UNLABELED_SUFFIX}": t for t in self.cfg.kd.unlabeled}

    def from_train(self, task: str) -> tuple[str, int | None] | None:
        """(base task, cap) of an unlabeled pseudo-task read from its task's unused training rows
        (kd.unlabeled.<task>: {from_train: true, cap: N}); None for every other task."""
        base = self.unlabeled_tasks().get(task)
        src = self.cfg.kd.unlabeled.get(base) if base is not None else None
        if isinstance(src, UnlabeledFromTrain):
            return base, src.cap
        return None

    def train_set(self, task: str, tokenizer=None) -> TrainSet:
        """A task's training examples: the seeded train_cap subset (all rows without a cap). An
        unlabeled pseudo-task `from_train` gets the rows of its task's file that subset leaves out,
        at most `cap` of them (seeded by data.cap_seed), so no example is both labelled and unlabeled."""
        data = self.encoded(task, "train", tokenizer)
        source = self.from_train(task)
        if source is None:
            return TrainSet(data, subsample(len(data), self.cap(task, "train_cap"), self.cfg.data.cap_seed))
        base, cap = source
        labelled = self.train_set(base, tokenizer)
        if list(labelled.data.ids) != list(data.ids):  # the same file read the same way: cannot differ
            raise DataError(data.meta["path"], f"{task}: the rows read as unlabeled text differ from {base}'s training rows")
        self.check_rows_left(task, len(data))
        unused = np.setdiff1d(np.arange(len(data), dtype=np.int64), labelled.indices)
        return TrainSet(data, unused[subsample(len(unused), cap, self.cfg.data.cap_seed)])

    def check_rows_left(self, task: str, n_rows: int) -> None:
        """An unlabeled pseudo-task read `from_train` needs rows its task's train_cap leaves out."""
        base = self.from_train(task)[0]
        cap = self.cap(base, "train_cap")
        if cap is None or cap >= n_rows:
            raise ConfigError(f"kd.unlabeled.{base}: from_train, but tasks.{base}.train_cap ({cap}) keeps all "
                              f"{n_rows} rows of {split_path(self.specs[base], 'train', self.cfg.data.root)}: "
                              f"no row is left unused")

    def cap(self, task: str, key: str) -> int | None:
        """The config's train_cap / dev_cap of a task (None: every row)."""
        opts = self.cfg.tasks.get(task)
        return getattr(opts, key) if opts is not None else None

    def dev_sets(self, task: str, tokenizer=None) -> dict[str, tuple[EncodedSplit, np.ndarray]]:
        """report name (MNLI-m, ...) -> (encoded dev split, indices after dev_cap)."""
        out = {}
        for split in self.specs[task].eval_splits("dev"):
            data = self.encoded(task, split, tokenizer)
            out[self.specs[task].report_name(split)] = (data, subsample(len(data), self.cap(task, "dev_cap"), self.cfg.data.cap_seed))
        return out

    def data_identity(self, task: str, split: str, tokenizer=None) -> dict:
        """What a stage reading this split depends on: file contents, tokenisation, the task's
        definition (head, labels, fields, head dropout) and, for training, the subset drawn."""
        data, spec = self.encoded(task, split, tokenizer), self.specs[task]
        ident = {"sha256": data.fingerprint, "tokenizer": data.meta["tokenizer_fingerprint"], "max_len": data.meta["max_len"],
                 "head": spec.head.value, "labels": list(spec.labels), "fields": spec.fields_for(split),
                 "head_dropout": spec.dropout, "positive_label": getattr(spec, "positive_label", None)}
        if split == "train":
            ident.update(cap=self.cap(task, "train_cap"), cap_seed=self.cfg.data.cap_seed)
            source = self.from_train(task)
            if source is not None:  # the rows its task's train_cap leaves unused, at most `cap`
                ident.update(cap=source[1], from_train={"task": source[0], "train_cap": self.cap(source[0], "train_cap")})
        return ident

    # ---------------------------------------------------------------------------------- model
    def new_model(self, dropout: float | None = None, encoder: str | None = None, encoder_cfg=None,
                  tasks: dict[str, TaskSpec] | None = None) -> MTModel:
        """A fresh MT-DNN from the config's encoder (or `encoder_cfg`, e.g. a smaller student);
        `dropout` and `encoder` override its shared-layer dropout and weights (teacher candidates)."""
        e = encoder_cfg or self.cfg.encoder
        model = MTModel.from_encoder(encoder or e.name, tasks or self.specs, num_hidden_layers=e.num_hidden_layers,
                                     dropout=e.dropout if dropout is None else dropout, init=e.init)
        return model.to(self.accelerator.device)

    def load_model(self, folder: Path, new_heads: bool = False) -> MTModel:
        """A saved model with the heads of this config's tasks, on this rank's device; with
        `new_heads` a task the model has no head for gets a fresh one (fine-tuning on a new task)."""
        return MTModel.from_pretrained(folder, tasks=self.specs, new_heads=new_heads).to(self.accelerator.device)

    # ------------------------------------------------------------------------------- inference
    def logits(self, model: MTModel, data: EncodedSplit, task: str, indices=None) -> np.ndarray:
        """predict_logits on every rank's share of `indices` (round-robin over lengths), gathered:
        every rank gets all of them, in order. One process: a plain predict_logits."""
        indices = np.arange(len(data)) if indices is None else np.asarray(indices)
        n, rank = self.accelerator.num_processes, self.accelerator.process_index
        kwargs = dict(batch_size=self.cfg.predict.batch_size, max_tokens=self.cfg.predict.max_tokens)
        with autocast(self.cfg.mtl.precision, self.accelerator.device)[0]:
            if n == 1:
                return predict_logits(model, data, task, indices, **kwargs)
            mine = np.arange(rank, len(indices), n)
            part = predict_logits(model, data, task, indices[mine], **kwargs)
        from accelerate.utils import gather_object

        out = None
        for pos, values in gather_object([(mine, part)]):
            out = np.zeros((len(indices), values.shape[1]), dtype=np.float32) if out is None else out
            out[pos] = values
        return out

    def config_dict(self) -> dict:
        return to_dict(self.cfg)
