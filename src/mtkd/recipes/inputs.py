"""What the pipeline checks and prepares before any stage runs: every length against the encoders,
every data file (`mtkd check-config` runs the same checks), then every split tokenised once into the
cache; and the data report written beside the results. (The config's rules: mtkd.config.validate.)"""

from __future__ import annotations

from mtkd import unlabeled
from mtkd.config import RunConfig
from mtkd.data import check_files, raise_problems, read_split, split_path
from mtkd.encoders import check_max_seq_len, resolve_encoder
from mtkd.errors import DataError
from mtkd.task_data import TaskData


def tokenizer_sources(cfg: RunConfig) -> list[str]:
    """Every encoder whose tokenizer some stage of this config uses (teachers, candidates, student)."""
    names = [cfg.encoder.name] + [c.encoder for c in cfg.kd.candidates if c.encoder]
    if cfg.kd.student is not None:
        names.append(cfg.kd.student.name)
    return list(dict.fromkeys(str(n) for n in names))


def longest_max_len(cfg: RunConfig, specs: dict) -> tuple[int, str]:
    """The longest length any task or split is cut at, and the config key that sets it (checked
    against the encoders' position embeddings)."""
    best = (cfg.data.max_seq_len, "data.max_seq_len")
    for t, spec in specs.items():
        for split, src in spec.splits.items():
            if src.max_seq_len is not None and src.max_seq_len > best[0]:
                best = (src.max_seq_len, f"tasks.{t}.splits.{split}.max_seq_len")
        if spec.max_seq_len is not None and spec.max_seq_len > best[0]:
            best = (spec.max_seq_len, f"tasks.{t}.max_seq_len")
    return best


def check_inputs(cfg: RunConfig, data: TaskData, splits: tuple[str, ...] = ("train", "dev", "test"),
                 rows: bool = False) -> list[str]:
    """What is checked before anything is tokenised (by prepare_data, and by `mtkd check-config`):
    the longest length any task or split is cut at against every encoder's positions, then every
    file of the splits named `splits` (data.check_files: exists, header or columns, field
    mapping, first row; with `rows`, every row), all files before the first error, which names
    every problem. Returns notes: the test files that are not there (predict reports them)."""
    from transformers import AutoConfig

    longest, key = longest_max_len(cfg, data.specs)
    for source in tokenizer_sources(cfg):  # a length beyond the position embeddings fails mid-training
        check_max_seq_len(AutoConfig.from_pretrained(resolve_encoder(source)), longest, f"encoder {source}", key=key)
    notes = check_files(data.specs, cfg.data.root, splits, rows=rows)
    if rows and any("train".startswith(p) for p in splits):
        for task in unlabeled.from_train_tasks(cfg):  # from_train needs rows the train_cap subset leaves out
            unlabeled.check_rows_left(data, task, len(read_split(data.specs[task], "train", cfg.data.root)))
    return notes


def prepare_data(cfg: RunConfig, data: TaskData, accelerator, splits: tuple[str, ...] = ("train", "dev", "test")
                 ) -> None:
    """Tokenise every split of every task once (those whose names start with `splits`), for every
    tokenizer the config uses, before any stage starts: every file is checked first
    (check_inputs), and rank 0 writes the caches while the others wait (the one collective of
    data loading; every rank calls it at the same point). A test file that is not there is not
    an error here: predict reports it (a malformed one is)."""
    check_inputs(cfg, data, splits)
    problems = []
    with accelerator.main_process_first():
        for source in tokenizer_sources(cfg):
            for task, spec in data.specs.items():
                for split in [s for s in spec.splits if s.startswith(splits)]:
                    try:
                        data.encoded(task, split, source)
                    except DataError as e:  # a row's problem (check_inputs saw every file's start)
                        if not (split.startswith("test") and not split_path(spec, split, cfg.data.root).is_file()):
                            problems.append(e)
            if problems:
                break
    raise_problems(problems)
    if any("train".startswith(p) for p in splits):
        for task in unlabeled.from_train_tasks(cfg):  # refused here, not when the student's training starts
            data.train_set(task)


def data_report(data: TaskData) -> dict:
    """Per task: examples used / available per split, truncations, skipped rows, notes."""
    rep = {}
    for t, spec in data.specs.items():
        r = {"note": spec.note} if spec.note else {}
        for split in spec.splits:
            try:
                d = data.encoded(t, split)
            except DataError as e:  # only test files may be absent (prepare_data checked the rest)
                r[split] = {"missing": str(e)}
                continue
            used = len(data.train_set(t).indices) if split == "train" else len(d)
            r[split] = {"file": d.meta["path"], "examples": len(d), "used": used,
                        "truncated": d.meta["n_truncated"], "skipped_rows": len(d.meta["skipped_rows"])}
        rep[t] = r
    return rep
