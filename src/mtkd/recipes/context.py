"""What every recipe needs: the resolved config, task definitions, tokenizers, encoded data, the
accelerator, and each stage's identity. Built once per `mtkd run`.

Stage identity: a stage is reused only when everything it depends on is unchanged: its own
settings, the identity of the model it starts from (an upstream stage's key, or the encoder) and
the fingerprints of the data it reads. `stage_identity` is that record; its hash is stored in the
stage's DONE.json and in every checkpoint. A finished stage whose inputs changed is trained again;
a checkpoint of a stage whose inputs changed is refused (resuming it would mix two experiments).

Distributed runs: nothing here runs a collective except `prepare_data` and `mark_done`, which
every rank calls at the same point. Inference (`logits`) is sharded across ranks and gathered.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from mtkd.config import DEFAULT_CANDIDATE_DROPOUTS, EncoderConfig, RunConfig, TrainConfig, to_dict
from mtkd.data import (EncodedSplit, check_files, encode_split, file_fingerprint, raise_problems, read_split, split_path,
                       subsample, tokenizer_fingerprint)
from mtkd.errors import CheckpointError, ConfigError, DataError, did_you_mean
from mtkd.identity import checkpoint_problem, differences, digest, plain
from mtkd.loop import TrainSet, autocast, make_accelerator, predict_logits
from mtkd.model import MTModel, resolve_encoder
from mtkd.tasks import HeadKind, TaskSpec, load_task_specs, task_from_dict

log = logging.getLogger(__name__)


UNLABELED_SUFFIX = "+unlabeled"
# TrainConfig fields that do not change what a stage computes (resume and reuse ignore them)
NOT_SHAPING = ("checkpoint_every", "keep_checkpoints", "log_every", "check_every")


def unlabeled_specs(cfg: RunConfig, specs: dict[str, TaskSpec]) -> dict[str, TaskSpec]:
    """kd.unlabeled entries as pseudo-tasks that share their task's head and have no labels."""
    out = {}
    for task, src in cfg.kd.unlabeled.items():
        if task not in specs:
            raise ConfigError(f"kd.unlabeled: task {task!r} is not in the task list {list(specs)}")
        if task not in cfg.kd.teacher_tasks:
            raise ConfigError(f"kd.unlabeled: task {task!r} has no teacher (kd.teacher_tasks) to label its text")
        name = f"{task}{UNLABELED_SUFFIX}"
        base = specs[task]
        if isinstance(src, dict) and src.get("from_train"):
            # the task's own training file, read as the task reads it (same rows, same ids) without
            # its labels; RunContext.train_set keeps the rows its train_cap leaves unused
            if "train" not in base.splits:
                raise ConfigError(f"kd.unlabeled.{task}: from_train, but {task} has no train split")
            fields = {k: v for k, v in base.fields_for("train").items() if k in ("text_a", "text_b", "id")}
            out[name] = replace(base, name=name, head_of=task, fields=fields, metrics=(), note=None,
                                splits={"train": replace(base.splits["train"], fields=None, report_as=None)})
            continue
        if not isinstance(src, dict) or "path" not in src:
            raise ConfigError(f"kd.unlabeled.{task}: expected a mapping with 'path' (and optional format, fields), "
                              f"or {{from_train: true, cap: N}}")
        fields = src.get("fields") or {k: v for k, v in base.fields.items() if k in ("text_a", "text_b")}
        split = {k: v for k, v in src.items() if k != "fields"}
        out[name] = task_from_dict(name, {"head": base.head.value, "labels": list(base.labels), "head_of": task,
                                          "fields": fields, "splits": {"train": split},
                                          "max_seq_len": base.max_seq_len}, "kd.unlabeled")  # cut as its task
    return out


def default_cache_dir() -> Path:
    return Path(os.environ.get("MTKD_CACHE") or Path.home() / ".cache" / "mtkd")


def train_settings(cfg: TrainConfig, device=None) -> dict:
    """The settings that shape a training run; `precision` as applied on `device` (fp32 on a CPU)."""
    out = {k: v for k, v in to_dict(cfg).items() if k not in NOT_SHAPING}
    if device is not None:
        out["precision"] = autocast(cfg.precision, device)[1]
    return out


@dataclass
class RunContext:
    cfg: RunConfig
    out_dir: Path
    specs: dict[str, TaskSpec] = field(init=False)
    accelerator: object = field(init=False)
    # planning: recipes compute identities and check existing stages, but train and predict nothing
    planning: bool = field(default=False, init=False)
    _encoded: dict = field(default_factory=dict, init=False)
    _tokenizers: dict = field(default_factory=dict, init=False)
    _fingerprints: dict = field(default_factory=dict, init=False)  # id(tokenizer) -> (tokenizer, fingerprint)
    _models: dict = field(default_factory=dict, init=False)  # model folder -> {"key", "tokenizer"}
    _weights: dict = field(default_factory=dict, init=False)
    problems: list = field(default_factory=list, init=False)  # refusals found while planning
    _reported: set = field(default_factory=set, init=False)

    def __post_init__(self):
        self.out_dir = Path(self.out_dir)
        specs = load_task_specs({n: o.override for n, o in self.cfg.tasks.items()}, self.cfg.tasks_file)
        # every task carries the length it is trained at (its own max_seq_len, else data.max_seq_len),
        # so the models saved from this run record it and predict uses it
        self.specs = {n: s if s.max_seq_len is not None else replace(s, max_seq_len=self.cfg.data.max_seq_len)
                      for n, s in specs.items()}
        self.specs.update(unlabeled_specs(self.cfg, self.specs))
        self.accelerator = make_accelerator(self.cfg.mtl.precision)
        self.cache_dir = Path(self.cfg.data.cache_dir) if self.cfg.data.cache_dir else default_cache_dir()

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

    def tokenizer_sources(self) -> list[str]:
        """Every encoder whose tokenizer some stage of this config uses (teachers, candidates, student)."""
        names = [self.cfg.encoder.name] + [c["encoder"] for c in self.cfg.kd.candidates if c.get("encoder")]
        if self.cfg.kd.student is not None:
            names.append(self.cfg.kd.student.name)
        return list(dict.fromkeys(str(n) for n in names))

    # ----------------------------------------------------------------------------------- data
    def encoded(self, task: str, split: str, tokenizer=None) -> EncodedSplit:
        """A split tokenised by `tokenizer` (a tokenizer, an encoder name or a model folder; default:
        the config's encoder). Not a collective: the on-disk cache is written atomically."""
        tok = tokenizer if hasattr(tokenizer, "backend_tokenizer") else self.tokenizer(tokenizer)
        if id(tok) not in self._fingerprints:  # ~0.2 s each (the vocabulary is serialised); the tokenizer
            self._fingerprints[id(tok)] = (tok, tokenizer_fingerprint(tok))  # is kept so its id stays its own
        key = (task, split, self._fingerprints[id(tok)][1])
        if key not in self._encoded:
            self._encoded[key] = encode_split(self.specs[task], split, tok, self.max_len(task, split),
                                              self.cache_dir, self.cfg.data.root)
        return self._encoded[key]

    def max_len(self, task: str, split: str) -> int:
        """The length a split is cut at: the split's max_seq_len, else the task's, else data.max_seq_len."""
        return self.specs[task].max_len_for(split, self.cfg.data.max_seq_len)

    def longest_max_len(self) -> tuple[int, str]:
        """The longest length any task or split is cut at, and the config key that sets it (checked
        against the encoders' position embeddings)."""
        best = (self.cfg.data.max_seq_len, "data.max_seq_len")
        for t, spec in self.specs.items():
            for split, src in spec.splits.items():
                if src.max_seq_len is not None and src.max_seq_len > best[0]:
                    best = (src.max_seq_len, f"tasks.{t}.splits.{split}.max_seq_len")
            if spec.max_seq_len is not None and spec.max_seq_len > best[0]:
                best = (spec.max_seq_len, f"tasks.{t}.max_seq_len")
        return best

    def check_inputs(self, splits: tuple[str, ...] = ("train", "dev", "test"), rows: bool = False) -> list[str]:
        """What is checked before anything is tokenised (by prepare_data, and by `mtkd check-config`):
        the longest length any task or split is cut at against every encoder's positions, then every
        file of the splits named `splits` (data.check_files: exists, header or columns, field
        mapping, first row; with `rows`, every row), all files before the first error, which names
        every problem. Returns notes: the test files that are not there (predict reports them)."""
        from transformers import AutoConfig

        from mtkd.model import check_max_seq_len

        self.check_task_lists()
        longest, key = self.longest_max_len()
        for source in self.tokenizer_sources():  # a length beyond the position embeddings fails mid-training
            check_max_seq_len(AutoConfig.from_pretrained(resolve_encoder(source)), longest, f"encoder {source}", key=key)
        notes = check_files(self.specs, self.cfg.data.root, splits, rows=rows)
        if rows and any("train".startswith(p) for p in splits):
            for task in self.unlabeled_tasks():  # from_train needs rows the train_cap subset leaves out
                if self.from_train(task) is not None:
                    self.check_rows_left(task, len(read_split(self.specs[task], "train", self.cfg.data.root)))
        return notes

    def check_task_lists(self) -> None:
        """The config's lists of task names name tasks that can play that part: finetune_tasks have
        training data; kd.teacher_tasks and kd.select_by are in the task list, teachers are not
        ranking tasks, and kd.top_k is at most the number of candidates."""
        kd, train = self.cfg.kd, self.train_tasks()
        for key, names, allowed in (("finetune_tasks", self.cfg.finetune_tasks or [], train),
                                    ("kd.teacher_tasks", kd.teacher_tasks, list(self.specs)),
                                    ("kd.select_by", kd.select_by, list(self.specs))):
            for name in names:
                if name not in allowed:
                    what = "a task with training data" if key == "finetune_tasks" else "in the task list"
                    raise ConfigError(f"{key}: task {name!r} is not {what} {allowed}{did_you_mean(name, allowed)}")
        for name in kd.teacher_tasks:
            if self.specs[name].head == HeadKind.RANKING:
                raise ConfigError(f"kd.teacher_tasks: task {name!r} is a ranking task; teachers for ranking "
                                  f"tasks are not supported yet")
        if kd.teacher_tasks:
            n = len(kd.candidates) or len(DEFAULT_CANDIDATE_DROPOUTS)
            if kd.top_k > n:
                raise ConfigError(f"kd.top_k is {kd.top_k} but there are {n} teacher candidates (kd.candidates)")

    def prepare_data(self, splits: tuple[str, ...] = ("train", "dev", "test")) -> None:
        """Tokenise every split of every task once (those whose names start with `splits`), for every
        tokenizer the config uses, before any stage starts: every file is checked first
        (check_inputs), and rank 0 writes the caches while the others wait (the one collective of
        data loading; every rank calls it at the same point). A test file that is not there is not
        an error here: predict reports it (a malformed one is)."""
        self.check_inputs(splits)
        problems = []
        with self.accelerator.main_process_first():
            for source in self.tokenizer_sources():
                for task, spec in self.specs.items():
                    for split in [s for s in spec.splits if s.startswith(splits)]:
                        try:
                            self.encoded(task, split, source)
                        except DataError as e:  # a row's problem (check_inputs saw every file's start)
                            if not (split.startswith("test") and not split_path(spec, split, self.cfg.data.root).is_file()):
                                problems.append(e)
                if problems:
                    break
        raise_problems(problems)
        if any("train".startswith(p) for p in splits):
            for task in self.unlabeled_tasks():  # refused here, not when the student's training starts
                if self.from_train(task) is not None:
                    self.train_set(task)

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
        if isinstance(src, dict) and src.get("from_train"):
            return base, src.get("cap")
        return None

    def train_set(self, task: str, tokenizer=None) -> TrainSet:
        """A task's training examples: the seeded train_cap subset (all rows without a cap). An
        unlabeled pseudo-task `from_train` gets the rows of its task's file that subset leaves out,
        at most `cap` of them (seeded by data.cap_seed), so no example is both labelled and unlabeled."""
        data = self.encoded(task, "train", tokenizer)
        source = self.from_train(task)
        if source is None:
            return TrainSet(data, subsample(len(data), self._cap(task, "train_cap"), self.cfg.data.cap_seed))
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
        cap = self._cap(base, "train_cap")
        if cap is None or cap >= n_rows:
            raise ConfigError(f"kd.unlabeled.{base}: from_train, but tasks.{base}.train_cap ({cap}) keeps all "
                              f"{n_rows} rows of {split_path(self.specs[base], 'train', self.cfg.data.root)}: "
                              f"no row is left unused")

    def _cap(self, task: str, key: str) -> int | None:
        opts = self.cfg.tasks.get(task)
        return getattr(opts, key) if opts is not None else None

    def dev_sets(self, task: str, tokenizer=None) -> dict[str, tuple[EncodedSplit, np.ndarray]]:
        """report name (MNLI-m, ...) -> (encoded dev split, indices after dev_cap)."""
        out = {}
        for split in self.specs[task].eval_splits("dev"):
            data = self.encoded(task, split, tokenizer)
            out[self.specs[task].report_name(split)] = (data, subsample(len(data), self._cap(task, "dev_cap"), self.cfg.data.cap_seed))
        return out

    def data_report(self) -> dict:
        """Per task: examples used / available per split, truncations, skipped rows, notes."""
        rep = {}
        for t, spec in self.specs.items():
            r = {"note": spec.note} if spec.note else {}
            for split in spec.splits:
                try:
                    d = self.encoded(t, split)
                except DataError as e:  # only test files may be absent (prepare_data checked the rest)
                    r[split] = {"missing": str(e)}
                    continue
                used = len(self.train_set(t).indices) if split == "train" else len(d)
                r[split] = {"file": d.meta["path"], "examples": len(d), "used": used,
                            "truncated": d.meta["n_truncated"], "skipped_rows": len(d.meta["skipped_rows"])}
            rep[t] = r
        return rep

    def data_identity(self, task: str, split: str, tokenizer=None) -> dict:
        """What a stage reading this split depends on: file contents, tokenisation, the task's
        definition (head, labels, fields, head dropout) and, for training, the subset drawn."""
        data, spec = self.encoded(task, split, tokenizer), self.specs[task]
        ident = {"sha256": data.fingerprint, "tokenizer": data.meta["tokenizer_fingerprint"], "max_len": data.meta["max_len"],
                 "head": spec.head.value, "labels": list(spec.labels), "fields": spec.fields_for(split),
                 "head_dropout": spec.dropout, "positive_label": getattr(spec, "positive_label", None)}
        if split == "train":
            ident.update(cap=self._cap(task, "train_cap"), cap_seed=self.cfg.data.cap_seed)
            source = self.from_train(task)
            if source is not None:  # the rows its task's train_cap leaves unused, at most `cap`
                ident.update(cap=source[1], from_train={"task": source[0], "train_cap": self._cap(source[0], "train_cap")})
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

    def encoder_identity(self, encoder_cfg: EncoderConfig | None = None, dropout: float | None = None,
                         encoder: str | None = None) -> dict:
        e = encoder_cfg or self.cfg.encoder
        name = str(encoder or e.name)
        return {"encoder": name, "weights": self._encoder_weights(name), "num_hidden_layers": e.num_hidden_layers,
                "dropout": e.dropout if dropout is None else dropout, "init": e.init}

    def _encoder_weights(self, name: str) -> str | None:
        """sha256 of a local encoder's weights file (a hub name is identified by its name)."""
        if name not in self._weights:
            folder = Path(resolve_encoder(name))
            files = (sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))) if folder.is_dir() else []
            files += [folder / "config.json"] if (folder / "config.json").is_file() else []
            self._weights[name] = digest([file_fingerprint(f) for f in files]) if files else None
        return self._weights[name]

    def register_model(self, folder: Path, key: str, tokenizer: str) -> None:
        """Record the identity of a model folder a stage of this run produces (or will produce)."""
        self._models[str(Path(folder).resolve())] = {"key": key, "tokenizer": str(tokenizer)}

    def stage_key(self, folder: Path) -> str | None:
        """The key of the stage of this run that produces `folder` (a model, the soft targets), if any."""
        known = self._models.get(str(Path(folder).resolve()))
        return known["key"] if known is not None else None

    def model_identity(self, folder: Path) -> dict:
        """The identity of a model to start from: the producing stage's key when this run made it,
        else the checksum of its weights."""
        key = self.stage_key(folder)
        if key is not None:
            return {"stage": key}
        from mtkd.model import weights_sha256

        if not (Path(folder) / "model.safetensors").is_file():
            raise CheckpointError(f"{folder}: not an mtkd model folder (no model.safetensors)")
        return {"weights": weights_sha256(folder)}

    def model_tokenizer(self, folder: Path) -> str:
        """Where the tokenizer of a model folder comes from: for a model this run makes, the encoder it
        was built from (the same whether the folder exists yet, or holds a stale model); else the
        folder itself."""
        known = self._models.get(str(Path(folder).resolve()))
        return known["tokenizer"] if known is not None else str(folder)

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

    # ------------------------------------------------------------------------------ stage done
    def stage_done(self, folder: Path, identity: dict) -> dict | None:
        """The finished stage's summary when it was made from exactly `identity`; else None (the
        stage runs; a stale DONE.json is reported with what changed)."""
        try:
            info = json.loads((Path(folder) / "DONE.json").read_text())
        except FileNotFoundError:
            return None
        if info.get("stage_key") == digest(identity):
            return info
        if self.main and str(folder) not in self._reported:  # once (planning sees it first)
            self._reported.add(str(folder))
            changed = differences(info.get("identity"), plain(identity)) if "identity" in info else ["made by an older mtkd"]
            log.warning("%s is out of date, training it again (%s)", folder, "; ".join(changed[:8]))
        return None

    def check_resumable(self, folder: Path, identity: dict) -> None:
        """Planning: a checkpoint written under other inputs is a refusal (resuming would mix them)."""
        problem = checkpoint_problem(Path(folder) / "checkpoints", identity)
        if problem:
            self.problems.append(problem)

    def mark_done(self, folder: Path, info: dict, identity: dict) -> None:
        if self.main:
            Path(folder).mkdir(parents=True, exist_ok=True)
            tmp = Path(folder) / "DONE.json.tmp"
            tmp.write_text(json.dumps({**info, "stage_key": digest(identity), "identity": identity}, indent=2, default=str))
            tmp.replace(Path(folder) / "DONE.json")
        self.accelerator.wait_for_everyone()

    def check_inside(self, path: Path) -> None:
        """Refuse a stage folder outside the run folder (nothing of the run is written or deleted there)."""
        path, root = Path(path).resolve(), self.out_dir.resolve()
        if path == root or root not in path.parents:
            raise ConfigError(f"refusing to delete {path}: it is not inside the run folder {root}")

    def remove_inside(self, path: Path) -> None:
        """Delete a folder of this run (e.g. a finished stage's checkpoints); refuses anything outside."""
        self.check_inside(path)
        shutil.rmtree(Path(path).resolve(), ignore_errors=True)

    def config_dict(self) -> dict:
        return to_dict(self.cfg)


class Timer:
    def __enter__(self):
        self.t0 = time.time()
        return self

    def __exit__(self, *exc):
        self.seconds = round(time.time() - self.t0, 1)
