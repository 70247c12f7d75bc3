"""Configs are plain data: nested dataclasses loaded from YAML, overridden with dotted key=value.

Unknown keys (with the closest known key suggested) and wrong types are errors, raised before
anything runs. The resolved config is saved next to every run's outputs (config.yaml).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from mtkd.errors import ConfigError, did_you_mean, unknown_key
from mtkd.sampler import SamplingMode


class Optimizer(str, Enum):
    ADAMAX = "adamax"  # the paper's
    ADAMW = "adamw"


class Precision(str, Enum):
    AUTO = "auto"  # CUDA: bf16 where supported, else fp16 with a grad scaler; CPU: fp32
    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


class Stage(str, Enum):
    SINGLE_TASK = "single_task"  # fine-tune the bare encoder per task (the paper's BERT row)
    MTL = "mtl"  # Algorithm 1 over all tasks
    FINETUNE = "finetune"  # fine-tune the MTL model per task
    EVALUATE = "evaluate"  # dev metrics of the fine-tuned models
    PREDICT = "predict"  # test predictions + GLUE submission zip
    TEACH = "teach"  # train teacher candidates, pick top k, fine-tune, write soft targets
    DISTILL = "distill"  # MTL with soft targets (MT-DNN-KD) + fine-tune + evaluate


@dataclass
class EncoderConfig:
    name: str = "default"  # 'default' = bundled all-MiniLM-L6-v2; else a local folder or hub name
    num_hidden_layers: int | None = None  # keep only the first N layers (smaller student)
    dropout: float | None = None  # shared-layer dropout; None keeps the encoder's own (0.1)
    init: str = "pretrained"  # 'pretrained' | 'random' (tests)


@dataclass
class DataConfig:
    root: str | None = None  # GLUE folder; None -> $MTKD_DATA_ROOT -> ../shared/data/glue
    cache_dir: str | None = None  # tokenised caches; None -> $MTKD_CACHE -> ~/.cache/mtkd
    max_seq_len: int = 512  # wordpiece inputs are cut here (paper: 512)
    cap_seed: int = 0  # seed of the random subsets drawn by train_cap / dev_cap


@dataclass
class TaskOptions:
    train_cap: int | None = None  # use a seeded random subset of at most this many training examples
    dev_cap: int | None = None
    override: dict = field(default_factory=dict)  # changes to the task definition (splits, note, dropout)


@dataclass
class TrainConfig:
    epochs: float = 5
    batch_size: int = 32
    lr: float = 5e-5
    optimizer: Optimizer = Optimizer.ADAMAX
    weight_decay: float = 0.0
    warmup: float = 0.1  # fraction of steps with linear warm-up, then linear decay to 0
    grad_clip: float = 1.0
    sampling: SamplingMode = SamplingMode.PROPORTIONAL
    temperature: float = 1.0  # sampling=temperature: p_t ∝ n_t^(1/T)
    epoch_size: int | None = None  # sampling=temperature: batches per epoch (None: same as proportional)
    bucket: int = 50  # length-bucketing window in batches (0: off); batches stay single-task and shuffled
    max_steps: int | None = None  # stop early (smoke runs)
    checkpoint_every: int = 500  # steps between checkpoints (also one at every epoch end)
    keep_checkpoints: int = 2
    precision: Precision = Precision.AUTO
    log_every: int = 20
    # steps between reading the loss on the host (divergence check, loss log): every step costs a
    # GPU sync per step; with N > 1 a divergence is caught up to N - 1 steps late
    check_every: int = 1


@dataclass
class PredictConfig:
    batch_size: int = 128  # most examples per inference batch
    # most padded tokens per batch (batch rows x longest row): length-sorted short examples go in
    # batches of up to batch_size, long ones in smaller batches; None: always batch_size
    max_tokens: int | None = 8192
    submission: bool = True


# a teacher candidate's keys: its seed (default: derived from the run seed), and either its start from
# the encoder (shared-layer dropout, another encoder) or from_mtdnn: continue this seed's MT-DNN MTL model
CANDIDATE_KEYS = ("seed", "dropout", "encoder", "from_mtdnn")
# teacher candidates when kd.candidates is empty: seeds derived from the run seed, these dropouts
DEFAULT_CANDIDATE_DROPOUTS = (0.1, 0.2, 0.3, 0.1)


@dataclass
class KDConfig:
    teacher_tasks: list[str] = field(default_factory=list)  # paper: MNLI, QQP, RTE, QNLI
    candidates: list[dict] = field(default_factory=list)  # [{seed?, dropout?, encoder?}] or [{from_mtdnn: true}]; paper: 6
    top_k: int = 3  # members kept per ensemble (paper: 3)
    select_by: list[str] = field(default_factory=list)  # tasks whose mean dev score ranks candidates
    soft_weight: float = 0.5  # weight of Eq. 4 in the student's loss (paper: average -> 0.5)
    temperature: float = 1.0  # T for teacher and student logits; soft term scaled by T² (T=1: paper)
    student: EncoderConfig | None = None  # the student's encoder (e.g. fewer layers); None: `encoder`
    finetune_with_soft: bool = True  # the student's per-task fine-tuning keeps the KD loss on teacher tasks
    # beyond the paper: extra unlabeled text per teacher task, from a file ({MNLI: {path: x.tsv, fields:
    # {text_a: s}}}) or from the task's own training rows that its train_cap leaves unused ({MNLI:
    # {from_train: true, cap: 3000}}); the teachers label it with soft targets and a second student,
    # "MT-DNN-KD + unlabeled text", trains on it with the soft loss alone (the paper's student does not)
    unlabeled: dict[str, dict] = field(default_factory=dict)
    # the teachers' own training budget: TrainConfig keys applied on top of `mtl` for the candidates'
    # MTL and on top of `finetune` for the members' fine-tuning (e.g. {epochs: 2}); MT-DNN, the
    # single-task baseline and the students keep `mtl` / `finetune`
    teacher_mtl: dict = field(default_factory=dict)
    teacher_finetune: dict = field(default_factory=dict)


@dataclass
class RunConfig:
    # the dotted keys the config file and --set gave (after every override, `~key` removals
    # included), set by load_config: what the user chose as opposed to a default (`mtkd predict`
    # cuts at data.max_seq_len only when it is given). Not a config key, not saved.
    given: typing.ClassVar[frozenset[str]] = frozenset()
    seeds: list[int] = field(default_factory=lambda: [42])
    stages: list[Stage] = field(default_factory=lambda: [Stage.MTL, Stage.FINETUNE, Stage.EVALUATE, Stage.PREDICT])
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    data: DataConfig = field(default_factory=DataConfig)
    tasks: dict[str, TaskOptions] = field(default_factory=dict)
    tasks_file: str | None = None  # YAML with custom task definitions (same format as GLUE's)
    mtl: TrainConfig = field(default_factory=TrainConfig)
    finetune: TrainConfig = field(default_factory=lambda: TrainConfig(epochs=1))
    finetune_tasks: list[str] | None = None  # None: every task with training data
    predict: PredictConfig = field(default_factory=PredictConfig)
    kd: KDConfig = field(default_factory=KDConfig)
    notes: str = ""  # free text saved with the results


# ------------------------------------------------------------------------------ loading/validation
_SCI_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _convert(value, non_none[0], where)
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if isinstance(tp, type) and issubclass(tp, Enum):
        try:
            return tp(value)
        except ValueError:
            values = [e.value for e in tp]
            raise ConfigError(f"{where}: {value!r} is not one of {values}{did_you_mean(value, values)}") from None
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        if args:
            return {k: _convert({} if v is None and dataclasses.is_dataclass(args[1]) else v, args[1], f"{where}.{k}")
                    for k, v in value.items()}
        return value
    if tp is float:
        if isinstance(value, str) and _SCI_FLOAT.fullmatch(value.strip()):
            return float(value)  # `5e-5`: a float in YAML 1.2, a string to PyYAML (YAML 1.1 needs `5.0e-5`)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {type(value).__name__} {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {type(value).__name__} {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {type(value).__name__} {value!r}")
        return value
    return value


def from_dict(cls, d: dict | None, where: str = "config"):
    """Build dataclass `cls` from a mapping; unknown keys and wrong types raise ConfigError."""
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(d).__name__} {d!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    if cls is TaskOptions:  # anything besides the caps is a change to the task definition
        from mtkd.tasks import check_task_entry, task_option_keys

        check_task_entry(d, where)  # the options and every task, split and field key, named here
        options = set(task_option_keys())
        d = {k: v for k, v in d.items() if k in options} | {"override": {k: v for k, v in d.items() if k not in options}}
    kwargs = {}
    for k, v in d.items():
        if k not in names:
            raise unknown_key(where, k, names)
        kwargs[k] = _convert(v, hints[k], f"{where}.{k}")
    return cls(**kwargs)


def to_dict(obj) -> Any:
    if dataclasses.is_dataclass(obj):
        out = {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        if isinstance(obj, TaskOptions):  # flatten back to the YAML form
            out.update(out.pop("override"))
        return out
    if isinstance(obj, Enum):
        return obj.value
    if isinstance(obj, list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_override(raw: dict, item: str) -> None:
    """`a.b.c=value` (value parsed as YAML) sets raw['a']['b']['c']; `~a.b` deletes it."""
    if item.startswith("~"):
        *parents, last = item[1:].split(".")
        node = raw
        for p in parents:
            node = node.get(p)
            if not isinstance(node, dict):  # absent or empty (null) section: nothing to delete
                return
        node.pop(last, None)
        return
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key=value")
    key, value = item.split("=", 1)
    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: the value is not valid YAML ({e})") from None
    *parents, last = key.strip().split(".")
    node = raw
    for p in parents:
        if node.get(p) is None:  # absent, or an empty section written as `name:` / `name: null`
            node[p] = {}
        node = node[p]
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {p!r} is not a section")
    node[last] = parsed


def given_keys(raw: dict, prefix: str = "") -> frozenset[str]:
    """Every dotted key path of `raw` with a value (not null): {'data', 'data.max_seq_len', ...}, so
    `--set data.max_seq_len=8` and `--set 'data={max_seq_len: 8}'` give the same keys."""
    keys: set[str] = set()
    for k, v in raw.items():
        if v is None:
            continue
        keys.add(prefix + str(k))
        if isinstance(v, dict):
            keys |= given_keys(v, f"{prefix}{k}.")
    return frozenset(keys)


def read_yaml_mapping(path: Path, what: str, mapping: str) -> dict:
    """A user's YAML file (a config, a tasks_file) that must hold a mapping; {} when empty. Errors
    name the file: missing ("<what> '<path>' does not exist"), invalid YAML, not a mapping."""
    if not path.is_file():
        raise ConfigError(f"{what} {str(path)!r} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected {mapping}")
    return raw


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    raw: dict = {}
    if path is not None:
        raw = read_yaml_mapping(Path(path), "config file", "a mapping at the top level")
    for item in overrides:
        apply_override(raw, item)
    cfg = from_dict(RunConfig, raw, where=str(path or "config"))
    cfg.given = given_keys(raw)
    if cfg.tasks_file and path is not None and not Path(cfg.tasks_file).is_absolute():
        candidate = Path(path).parent / cfg.tasks_file
        if candidate.is_file():
            cfg.tasks_file = str(candidate)
    validate(cfg, str(path or "config"))
    return cfg


def _bad(where: str, key: str, expected: str, value) -> ConfigError:
    return ConfigError(f"{where}: {key} must be {expected}, got {value!r}")


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _check_int(where, key, v, low: int, optional: bool = False) -> None:
    if v is None and optional:
        return
    if v is None or v < low:
        raise _bad(where, key, "a positive integer" if low == 1 else f"an integer >= {low}", v)


def _check_float(where, key, v, low: float, high: float | None = None, low_open: bool = False,
                 high_open: bool = True, optional: bool = False) -> None:
    if v is None and optional:
        return
    ok = _finite(v) and (v > low if low_open else v >= low)
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        if high is None:
            expected = "a positive number" if (low == 0 and low_open) else f"a number >= {low:g}"
        else:
            expected = f"a number in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise _bad(where, key, expected, v)


def _check_encoder(where: str, key: str, enc: EncoderConfig) -> None:
    _check_int(where, f"{key}.num_hidden_layers", enc.num_hidden_layers, 1, optional=True)
    _check_float(where, f"{key}.dropout", enc.dropout, 0, 1, optional=True)
    if enc.init not in ("pretrained", "random"):
        raise _bad(where, f"{key}.init", "'pretrained' or 'random'", enc.init)


def _check_train(where: str, key: str, tc: TrainConfig) -> None:
    _check_float(where, f"{key}.epochs", tc.epochs, 0, low_open=True)
    _check_int(where, f"{key}.batch_size", tc.batch_size, 1)
    _check_float(where, f"{key}.lr", tc.lr, 0, low_open=True)
    _check_float(where, f"{key}.weight_decay", tc.weight_decay, 0)
    _check_float(where, f"{key}.warmup", tc.warmup, 0, 1)
    _check_float(where, f"{key}.grad_clip", tc.grad_clip, 0)
    _check_float(where, f"{key}.temperature", tc.temperature, 0, low_open=True)
    _check_int(where, f"{key}.epoch_size", tc.epoch_size, 1, optional=True)
    _check_int(where, f"{key}.bucket", tc.bucket, 0)
    _check_int(where, f"{key}.max_steps", tc.max_steps, 1, optional=True)
    _check_int(where, f"{key}.checkpoint_every", tc.checkpoint_every, 1)
    _check_int(where, f"{key}.keep_checkpoints", tc.keep_checkpoints, 0)
    _check_int(where, f"{key}.log_every", tc.log_every, 1)
    _check_int(where, f"{key}.check_every", tc.check_every, 1)


TEACHER_SECTIONS = ("mtl", "finetune")  # kd.teacher_mtl / kd.teacher_finetune apply on top of these


def teacher_train_config(cfg: RunConfig, section: str, where: str = "config") -> TrainConfig:
    """The teachers' training settings: `mtl` (the candidates' MTL) or `finetune` (the members'
    fine-tuning) with the keys of kd.teacher_mtl / kd.teacher_finetune applied on top. Unknown keys
    (with the closest suggested) and wrong types are refused as everywhere in the config."""
    if section not in TEACHER_SECTIONS:
        raise ValueError(f"section must be one of {TEACHER_SECTIONS}, got {section!r}")
    base, overrides = getattr(cfg, section), getattr(cfg.kd, f"teacher_{section}")
    if not overrides:
        return base
    return from_dict(TrainConfig, {**to_dict(base), **overrides}, f"{where}: kd.teacher_{section}")


def configured_candidates(cfg: RunConfig) -> list[dict]:
    """kd.candidates as written, or the default 4 (dropout 0.1/0.2/0.3/0.1), before seeds are derived."""
    return cfg.kd.candidates or [{"dropout": d} for d in DEFAULT_CANDIDATE_DROPOUTS]


def teacher_candidates(cfg: RunConfig, seed: int) -> list[dict]:
    """The configured candidates, or by default 4 differing by seed and dropout 0.1/0.2/0.3/0.1; a
    candidate without a seed gets seed + 1000 * (its position + 1). Two candidates that would train
    the same model (same seed and start) are refused: identical teachers at full cost."""
    cands = [{"seed": seed + 1000 * (i + 1), **c} for i, c in enumerate(configured_candidates(cfg))]
    seen: dict[tuple, int] = {}
    for i, c in enumerate(cands):
        key = (c["seed"], bool(c.get("from_mtdnn")), c.get("dropout"), c.get("encoder"))
        if key in seen:
            raise ConfigError(f"kd.candidates[{i}] trains the same model as kd.candidates[{seen[key]}] at run seed "
                              f"{seed} (seed {c['seed']}, the same start): give it another seed, dropout or encoder")
        seen[key] = i
    return cands


UNLABELED_FROM_TRAIN_KEYS = ("from_train", "cap")


def _check_from_train(where: str, task: str, src: dict, cfg: RunConfig) -> None:
    """kd.unlabeled.<task>: {from_train: true, cap: N}: the rows of the task's training file that its
    train_cap leaves unused (so there must be a train_cap), at most N of them."""
    key = f"kd.unlabeled.{task}"
    for k in src:
        if k not in UNLABELED_FROM_TRAIN_KEYS:
            raise unknown_key(f"{where}: {key} (from_train)", k, UNLABELED_FROM_TRAIN_KEYS)
    if src["from_train"] is not True:
        raise _bad(where, f"{key}.from_train", "true (or give the text's file as 'path' instead)", src["from_train"])
    cap = src.get("cap")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 1):
        raise _bad(where, f"{key}.cap", "a positive integer (or absent: every unused row)", cap)
    opts = cfg.tasks.get(task)
    if opts is None or opts.train_cap is None:
        raise ConfigError(f"{where}: {key}: from_train takes the rows of {task}'s training file that "
                          f"tasks.{task}.train_cap leaves unused, but {task} has no train_cap: every row is "
                          f"already labelled training data (set tasks.{task}.train_cap, or give a 'path')")


def validate(cfg: RunConfig, where: str = "config") -> None:
    """Value checks after the type checks of from_dict: every refusal names the key and the value.
    (data.max_seq_len against the encoder's positions needs the encoder: mtkd.encoders.check_max_seq_len.)"""
    from mtkd.tasks import check_name

    if not cfg.seeds:
        raise ConfigError(f"{where}: seeds must hold at least one seed")
    _check_encoder(where, "encoder", cfg.encoder)
    if cfg.kd.student is not None:
        _check_encoder(where, "kd.student", cfg.kd.student)
    if cfg.data.max_seq_len < 8:
        raise ConfigError(f"{where}: data.max_seq_len must be at least 8, got {cfg.data.max_seq_len}")
    for name, opts in cfg.tasks.items():
        check_name(name, f"{where}: tasks: task name")
        for key in ("train_cap", "dev_cap"):
            _check_int(where, f"tasks.{name}.{key}", getattr(opts, key), 1, optional=True)
    for key in ("finetune_tasks", "kd.teacher_tasks", "kd.select_by"):
        obj = cfg
        for part in key.split("."):
            obj = getattr(obj, part)
        for i, name in enumerate(obj or ()):
            check_name(name, f"{where}: {key}[{i}]")
    for name, src in cfg.kd.unlabeled.items():
        check_name(name, f"{where}: kd.unlabeled: task name")
        if name not in cfg.tasks:  # before what the entry asks of the task (a typo has no train_cap)
            raise ConfigError(f"{where}: kd.unlabeled: no task {name!r} in the config's tasks "
                              f"{list(cfg.tasks)}{did_you_mean(name, cfg.tasks)}")
        if isinstance(src, dict) and "from_train" in src:
            _check_from_train(where, name, src, cfg)
    for section in ("mtl", "finetune"):
        _check_train(where, section, getattr(cfg, section))
        _check_train(where, f"kd.teacher_{section}", teacher_train_config(cfg, section, where))
    _check_int(where, "predict.batch_size", cfg.predict.batch_size, 1)
    _check_int(where, "predict.max_tokens", cfg.predict.max_tokens, 1, optional=True)
    _check_int(where, "kd.top_k", cfg.kd.top_k, 1)
    _check_float(where, "kd.soft_weight", cfg.kd.soft_weight, 0, 1, high_open=False)
    _check_float(where, "kd.temperature", cfg.kd.temperature, 0, low_open=True)
    for i, cand in enumerate(cfg.kd.candidates):
        _check_candidate(where, i, cand, cfg)


def _check_candidate(where: str, i: int, cand, cfg: RunConfig) -> None:
    """kd.candidates[i]: {seed?, dropout?, encoder?} (from the encoder) or {seed?, from_mtdnn: true}."""
    key = f"kd.candidates[{i}]"
    if not isinstance(cand, dict):
        raise _bad(where, key, "a mapping {seed, dropout, encoder} or {seed, from_mtdnn: true}", cand)
    for k in cand:
        if k not in CANDIDATE_KEYS:
            raise unknown_key(f"{where}: {key}", k, CANDIDATE_KEYS)
    if "seed" in cand and (isinstance(cand["seed"], bool) or not isinstance(cand["seed"], int) or cand["seed"] < 0):
        raise _bad(where, f"{key}.seed", "an integer >= 0", cand["seed"])
    if cand.get("encoder") is not None and (not isinstance(cand["encoder"], str) or not cand["encoder"].strip()):
        raise _bad(where, f"{key}.encoder", "an encoder name or folder", cand["encoder"])
    if cand.get("dropout") is not None:
        d = cand["dropout"]
        _check_float(where, f"{key}.dropout", None if isinstance(d, bool) else d, 0, 1)
    if "from_mtdnn" in cand:
        if not isinstance(cand["from_mtdnn"], bool):
            raise _bad(where, f"{key}.from_mtdnn", "true or false", cand["from_mtdnn"])
        if cand["from_mtdnn"]:
            clash = [k for k in ("dropout", "encoder") if cand.get(k) is not None]
            if clash:
                raise ConfigError(f"{where}: {key}: from_mtdnn continues MT-DNN's MTL model, which has its own "
                                  f"{' and '.join(clash)}; remove {', '.join(clash)}")
            if Stage.MTL not in cfg.stages and {Stage.TEACH, Stage.DISTILL} & set(cfg.stages):
                raise ConfigError(f"{where}: {key}.from_mtdnn needs MT-DNN's MTL model: add mtl to `stages`")


def save_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
