"""Configs are plain data: nested models (mtkd.schema) loaded from YAML, overridden with dotted
key=value, with the rules between their keys in one `validate`.

Unknown keys (with the closest known key suggested), wrong types and out-of-range values are errors,
raised before anything runs. The resolved config is saved next to every run's outputs (config.yaml).
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, ClassVar, Literal, Union

import yaml
from pydantic import Discriminator, Field, Strict, Tag, WrapValidator, create_model, model_validator
from pydantic.fields import FieldInfo

from mtkd.errors import ConfigError, did_you_mean
from mtkd.heads import kind_of
from mtkd.sampler import SamplingMode
from mtkd.schema import Partial, Schema, from_dict, load_yaml, read_yaml_mapping, refuse, to_dict
from mtkd.tasks import MIN_SEQ_LEN, SplitSource, TaskOptions, TaskSpec, check_name, load_task_specs


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


class Section(Schema):
    """A section of the config; one written empty (`mtl:`) is its defaults."""

    @model_validator(mode="before")
    @classmethod
    def _empty_is_defaults(cls, data):
        return {} if data is None else data


class EncoderConfig(Section):
    name: str = "default"  # 'default' = bundled all-MiniLM-L6-v2; else a local folder or hub name
    num_hidden_layers: int | None = Field(None, ge=1)  # keep only the first N layers (smaller student)
    dropout: float | None = Field(None, ge=0, lt=1)  # shared-layer dropout; None keeps the encoder's own (0.1)
    init: Literal["pretrained", "random"] = "pretrained"  # 'random': tests


class DataConfig(Section):
    root: str | None = None  # GLUE folder; None -> $MTKD_DATA_ROOT -> ../shared/data/glue
    cache_dir: str | None = None  # tokenised caches; None -> $MTKD_CACHE -> ~/.cache/mtkd
    max_seq_len: int = Field(512, ge=MIN_SEQ_LEN)  # wordpiece inputs are cut here (paper: 512)
    cap_seed: int = 0  # seed of the random subsets drawn by train_cap / dev_cap


class TrainConfig(Section):
    epochs: float = Field(5, gt=0)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(5e-5, gt=0)
    optimizer: Optimizer = Field(Optimizer.ADAMAX, strict=False)
    weight_decay: float = Field(0.0, ge=0)
    warmup: float = Field(0.1, ge=0, lt=1)  # fraction of steps with linear warm-up, then linear decay to 0
    grad_clip: float = Field(1.0, ge=0)
    sampling: SamplingMode = Field(SamplingMode.PROPORTIONAL, strict=False)
    temperature: float = Field(1.0, gt=0)  # sampling=temperature: p_t ∝ n_t^(1/T)
    epoch_size: int | None = Field(None, ge=1)  # sampling=temperature: batches per epoch (None: as proportional)
    bucket: int = Field(50, ge=0)  # length-bucketing window in batches (0: off); batches stay single-task and shuffled
    max_steps: int | None = Field(None, ge=1)  # stop early (smoke runs)
    checkpoint_every: int = Field(500, ge=1)  # steps between checkpoints (also one at every epoch end)
    keep_checkpoints: int = Field(2, ge=0)
    precision: Precision = Field(Precision.AUTO, strict=False)
    log_every: int = Field(20, ge=1)
    # steps between reading the loss on the host (divergence check, loss log): every step costs a
    # GPU sync per step; with N > 1 a divergence is caught up to N - 1 steps late
    check_every: int = Field(1, ge=1)


def _as_written(value, handler):
    checked = handler(value)
    return value if isinstance(value, int) else checked


# a number checked as a float and kept as written: the integer 0 stays 0 (identities hash it)
NumberAsWritten = Annotated[float, WrapValidator(_as_written)]

# kd.teacher_mtl / kd.teacher_finetune: any TrainConfig keys (same types and ranges), applied on top
# of `mtl` / `finetune`; a key not given is unset (null is refused, as in TrainConfig)
TrainChanges = create_model("TrainChanges", __base__=Partial, **{
    k: (NumberAsWritten if f.annotation is float else f.annotation, FieldInfo.merge_field_infos(f, default=None))
    for k, f in TrainConfig.model_fields.items()})


class PredictConfig(Section):
    batch_size: int = Field(128, ge=1)  # most examples per inference batch
    # most padded tokens per batch (batch rows x longest row): length-sorted short examples go in
    # batches of up to batch_size, long ones in smaller batches; None: always batch_size
    max_tokens: int | None = Field(8192, ge=1)
    submission: bool = True


class Candidate(Partial):
    """A teacher candidate (kd.candidates[i]): its seed, and where its MTL starts: the encoder (with
    another shared-layer dropout or encoder, if given), or from_mtdnn: this seed's MT-DNN MTL model,
    trained further (it has its own dropout and encoder)."""

    seed: int = Field(None, ge=0)  # unset: derived from the run seed (KDConfig.seeded_candidates)
    dropout: NumberAsWritten | None = Field(None, ge=0, lt=1)
    encoder: str | None = Field(None, pattern=r"\S", description="an encoder name or folder")
    from_mtdnn: bool = False

    @model_validator(mode="after")
    def _from_mtdnn_has_its_own_start(self):
        clash = [k for k in ("dropout", "encoder") if self.from_mtdnn and getattr(self, k) is not None]
        if clash:
            raise refuse(f"from_mtdnn continues MT-DNN's MTL model, which has its own {' and '.join(clash)}; "
                         f"remove {', '.join(clash)}")
        return self


# teacher candidates when kd.candidates is empty: seeds derived from the run seed, these dropouts
DEFAULT_CANDIDATE_DROPOUTS = (0.1, 0.2, 0.3, 0.1)


class UnlabeledFromTrain(Partial):
    """kd.unlabeled.<task>: {from_train: true, cap: N}: the rows of the task's training file that its
    train_cap leaves unused (so it must have one), at most N of them."""

    from_train: bool  # true (validate refuses false, naming the key)
    cap: int | None = Field(None, ge=1, description="a positive integer (or absent: every unused row)")


def _unlabeled_kind(source) -> str:
    from_train = isinstance(source, UnlabeledFromTrain) or isinstance(source, dict) and "from_train" in source
    return "from_train" if from_train else "file"


# kd.unlabeled.<task>: a file of text (a split's keys: path, format, fields, ...) or the task's unused training rows
UnlabeledSource = Annotated[
    Union[Annotated[SplitSource, Tag("file")], Annotated[UnlabeledFromTrain, Tag("from_train")]],
    Discriminator(_unlabeled_kind)]


class KDConfig(Section):
    teacher_tasks: list[str] = []  # paper: MNLI, QQP, RTE, QNLI
    candidates: list[Candidate] = []  # [{seed?, dropout?, encoder?}] or [{from_mtdnn: true}]; paper: 6
    top_k: int = Field(3, ge=1)  # members kept per ensemble (paper: 3)
    select_by: list[str] = []  # tasks whose mean dev score ranks candidates
    soft_weight: float = Field(0.5, ge=0, le=1)  # weight of Eq. 4 in the student's loss (paper: average -> 0.5)
    temperature: float = Field(1.0, gt=0)  # T for teacher and student logits; soft term scaled by T² (T=1: paper)
    student: EncoderConfig | None = None  # the student's encoder (e.g. fewer layers); None: `encoder`
    finetune_with_soft: bool = True  # the student's per-task fine-tuning keeps the KD loss on teacher tasks
    # beyond the paper: extra unlabeled text per teacher task, from a file ({MNLI: {path: x.tsv, fields:
    # {text_a: s}}}) or from the task's own training rows that its train_cap leaves unused ({MNLI:
    # {from_train: true, cap: 3000}}); the teachers label it with soft targets and a second student,
    # "MT-DNN-KD + unlabeled text", trains on it with the soft loss alone (the paper's student does not)
    unlabeled: dict[str, UnlabeledSource] = {}
    # the teachers' own training budget: TrainConfig keys applied on top of `mtl` for the candidates'
    # MTL and on top of `finetune` for the members' fine-tuning (e.g. {epochs: 2}); MT-DNN, the
    # single-task baseline and the students keep `mtl` / `finetune`
    teacher_mtl: TrainChanges = Field(default_factory=TrainChanges)
    teacher_finetune: TrainChanges = Field(default_factory=TrainChanges)

    def seeded_candidates(self, seed: int) -> list[Candidate]:
        """The candidates at run seed `seed`: kd.candidates, or by default 4 with shared-layer dropout
        0.1/0.2/0.3/0.1; a candidate without a seed gets seed + 1000 * (its position + 1)."""
        cands = self.candidates or [Candidate(dropout=d) for d in DEFAULT_CANDIDATE_DROPOUTS]
        return [c if c.seed is not None else c.model_copy(update={"seed": seed + 1000 * (i + 1)})
                for i, c in enumerate(cands)]


class RunConfig(Schema):
    # the dotted keys the config file and --set gave (after every override, `~key` removals
    # included), set by load_config: what the user chose as opposed to a default (`mtkd predict`
    # cuts at data.max_seq_len only when it is given). Not a config key: not saved, not compared.
    given: ClassVar[frozenset[str]] = frozenset()
    seeds: list[int] = [42]
    stages: list[Annotated[Stage, Strict(False)]] = [Stage.MTL, Stage.FINETUNE, Stage.EVALUATE, Stage.PREDICT]
    encoder: EncoderConfig = Field(default_factory=EncoderConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    tasks: dict[str, TaskOptions] = {}
    tasks_file: str | None = None  # YAML with custom task definitions (same format as GLUE's)
    mtl: TrainConfig = Field(default_factory=TrainConfig)
    # built unvalidated so that epochs stays the integer 1, as every default stays as written
    finetune: TrainConfig = Field(default_factory=lambda: TrainConfig.model_construct(epochs=1))
    finetune_tasks: list[str] | None = None  # None: every task with training data
    predict: PredictConfig = Field(default_factory=PredictConfig)
    kd: KDConfig = Field(default_factory=KDConfig)
    notes: str = ""  # free text saved with the results


# ------------------------------------------------------------------------------ loading
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
        parsed = load_yaml(value)
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


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """The config file (or the defaults) with `overrides` applied, validated (types, ranges and the
    rules `validate` checks without the task definitions)."""
    raw: dict = {}
    if path is not None:
        raw = read_yaml_mapping(Path(path), "config file", "a mapping at the top level")
    for item in overrides:
        apply_override(raw, item)
    where = str(path or "config")
    cfg = from_dict(RunConfig, raw, where)
    object.__setattr__(cfg, "given", given_keys(raw))  # beside the fields: not validated, saved or compared
    if cfg.tasks_file and path is not None and not Path(cfg.tasks_file).is_absolute():
        candidate = Path(path).parent / cfg.tasks_file
        if candidate.is_file():
            cfg.tasks_file = str(candidate)
    validate(cfg, where=where)
    return cfg


def task_specs(cfg: RunConfig) -> dict[str, TaskSpec]:
    """The config's tasks, resolved (mtkd.tasks.load_task_specs)."""
    return load_task_specs({n: o.override for n, o in cfg.tasks.items()}, cfg.tasks_file)


def teacher_train_config(cfg: RunConfig, section: str) -> TrainConfig:
    """The teachers' training settings: `mtl` (the candidates' MTL) or `finetune` (the members'
    fine-tuning) with the keys of kd.teacher_mtl / kd.teacher_finetune applied on top."""
    base, changes = getattr(cfg, section), getattr(cfg.kd, f"teacher_{section}")
    if not changes.model_fields_set:
        return base
    return TrainConfig.model_validate({**base.model_dump(), **changes.model_dump()})


def save_config(cfg: RunConfig, path: Path) -> None:
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))


# ------------------------------------------------------------------------------ the rules between keys
def validate(cfg: RunConfig, specs: dict[str, TaskSpec] | None = None, where: str = "config") -> None:
    """The rules between a config's keys, which `run` and `check-config` share: those of the config
    alone (load_config checks these) and, given the resolved task definitions `specs`, those about
    the tasks: a head_of task is in the list; finetune_tasks have training data; kd.teacher_tasks and
    kd.select_by are in the list, and teachers are of a kind that can have them; kd.unlabeled's
    tasks have teachers and a from_train one a training file; kd.top_k is at most the number of
    candidates, and no two candidates train the same model. Every refusal names the key and the
    value. (data.max_seq_len against the encoder's positions: mtkd.encoders.check_max_seq_len.)"""
    kd = cfg.kd
    if not cfg.seeds:
        raise ConfigError(f"{where}: seeds must hold at least one seed")
    for name in cfg.tasks:
        check_name(name, f"{where}: tasks: task name")
    for key, names in (("finetune_tasks", cfg.finetune_tasks or []), ("kd.teacher_tasks", kd.teacher_tasks),
                       ("kd.select_by", kd.select_by)):
        for i, name in enumerate(names):
            check_name(name, f"{where}: {key}[{i}]")
    for task, source in kd.unlabeled.items():
        check_name(task, f"{where}: kd.unlabeled: task name")
        if task not in cfg.tasks:  # before what the entry asks of the task (a typo has no train_cap)
            raise ConfigError(f"{where}: kd.unlabeled: no task {task!r} in the config's tasks "
                              f"{list(cfg.tasks)}{did_you_mean(task, cfg.tasks)}")
        if isinstance(source, UnlabeledFromTrain) and source.from_train is not True:
            raise ConfigError(f"{where}: kd.unlabeled.{task}.from_train must be true (or give the text's file as "
                              f"'path' instead), got {source.from_train!r}")
        if isinstance(source, UnlabeledFromTrain) and cfg.tasks[task].train_cap is None:
            raise ConfigError(f"{where}: kd.unlabeled.{task}: from_train takes the rows of {task}'s training file "
                              f"that tasks.{task}.train_cap leaves unused, but {task} has no train_cap: every row is "
                              f"already labelled training data (set tasks.{task}.train_cap, or give a 'path')")
    for i, cand in enumerate(kd.candidates):
        if cand.from_mtdnn and Stage.MTL not in cfg.stages and {Stage.TEACH, Stage.DISTILL} & set(cfg.stages):
            raise ConfigError(f"{where}: kd.candidates[{i}].from_mtdnn needs MT-DNN's MTL model: add mtl to `stages`")
    if specs is None:
        return
    # the rules about the tasks
    for spec in specs.values():
        if spec.head_of and spec.head_of not in specs:
            raise ConfigError(f"{where}: task {spec.name!r} uses the head of {spec.head_of!r}, which is not in the "
                              f"task list {list(specs)}{did_you_mean(spec.head_of, specs)}")
    train = [t for t, s in specs.items() if "train" in s.splits and s.head_of is None]
    for key, names, allowed in (("finetune_tasks", cfg.finetune_tasks or [], train),
                                ("kd.teacher_tasks", kd.teacher_tasks, list(specs)),
                                ("kd.select_by", kd.select_by, list(specs))):
        for name in names:
            if name not in allowed:
                what = "a task with training data" if key == "finetune_tasks" else "in the task list"
                raise ConfigError(f"{where}: {key}: task {name!r} is not {what} {allowed}{did_you_mean(name, allowed)}")
    for name in kd.teacher_tasks:
        if not kind_of(specs[name]).has_teachers:
            raise ConfigError(f"{where}: kd.teacher_tasks: task {name!r} is a {specs[name].head.value} task; teachers "
                              f"for {specs[name].head.value} tasks are not supported yet")
    for task, source in kd.unlabeled.items():
        if task not in kd.teacher_tasks:
            raise ConfigError(f"{where}: kd.unlabeled: task {task!r} has no teacher (kd.teacher_tasks) to label its "
                              f"text")
        if isinstance(source, UnlabeledFromTrain) and "train" not in specs[task].splits:
            raise ConfigError(f"{where}: kd.unlabeled.{task}: from_train, but {task} has no train split")
    if not kd.teacher_tasks:
        return
    n = len(kd.seeded_candidates(0))
    if kd.top_k > n:
        raise ConfigError(f"{where}: kd.top_k is {kd.top_k} but there are {n} teacher candidates (kd.candidates)")
    for seed in cfg.seeds:  # identical teachers at full cost
        seen: dict[tuple, int] = {}
        for i, c in enumerate(kd.seeded_candidates(seed)):
            start = (c.seed, c.from_mtdnn, c.dropout, c.encoder)
            if start in seen:
                raise ConfigError(f"{where}: kd.candidates[{i}] trains the same model as kd.candidates[{seen[start]}] "
                                  f"at run seed {seed} (seed {c.seed}, the same start): give it another seed, dropout "
                                  f"or encoder")
            seen[start] = i

