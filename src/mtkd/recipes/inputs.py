"""What the pipeline checks and prepares before any stage runs: every length against the encoders,
every data file (`mtkd check-config` runs the same checks), then every split tokenised once into the
cache; and the data report written beside the results. (The config's rules: mtkd.config.validate.)"""

from __future__ import annotations

from mtkd.data import check_files, raise_problems, read_split, split_path
from mtkd.errors import DataError
from mtkd.model import resolve_encoder
from mtkd.recipes.context import RunContext


def tokenizer_sources(ctx: RunContext) -> list[str]:
    """Every encoder whose tokenizer some stage of this config uses (teachers, candidates, student)."""
    names = [ctx.cfg.encoder.name] + [c.encoder for c in ctx.cfg.kd.candidates if c.encoder]
    if ctx.cfg.kd.student is not None:
        names.append(ctx.cfg.kd.student.name)
    return list(dict.fromkeys(str(n) for n in names))


def longest_max_len(ctx: RunContext) -> tuple[int, str]:
    """The longest length any task or split is cut at, and the config key that sets it (checked
    against the encoders' position embeddings)."""
    best = (ctx.cfg.data.max_seq_len, "data.max_seq_len")
    for t, spec in ctx.specs.items():
        for split, src in spec.splits.items():
            if src.max_seq_len is not None and src.max_seq_len > best[0]:
                best = (src.max_seq_len, f"tasks.{t}.splits.{split}.max_seq_len")
        if spec.max_seq_len is not None and spec.max_seq_len > best[0]:
            best = (spec.max_seq_len, f"tasks.{t}.max_seq_len")
    return best


def check_inputs(ctx: RunContext, splits: tuple[str, ...] = ("train", "dev", "test"), rows: bool = False) -> list[str]:
    """What is checked before anything is tokenised (by prepare_data, and by `mtkd check-config`):
    the longest length any task or split is cut at against every encoder's positions, then every
    file of the splits named `splits` (data.check_files: exists, header or columns, field
    mapping, first row; with `rows`, every row), all files before the first error, which names
    every problem. Returns notes: the test files that are not there (predict reports them)."""
    from transformers import AutoConfig

    from mtkd.model import check_max_seq_len

    longest, key = longest_max_len(ctx)
    for source in tokenizer_sources(ctx):  # a length beyond the position embeddings fails mid-training
        check_max_seq_len(AutoConfig.from_pretrained(resolve_encoder(source)), longest, f"encoder {source}", key=key)
    notes = check_files(ctx.specs, ctx.cfg.data.root, splits, rows=rows)
    if rows and any("train".startswith(p) for p in splits):
        for task in ctx.unlabeled_tasks():  # from_train needs rows the train_cap subset leaves out
            if ctx.from_train(task) is not None:
                ctx.check_rows_left(task, len(read_split(ctx.specs[task], "train", ctx.cfg.data.root)))
    return notes


def prepare_data(ctx: RunContext, splits: tuple[str, ...] = ("train", "dev", "test")) -> None:
    """Tokenise every split of every task once (those whose names start with `splits`), for every
    tokenizer the config uses, before any stage starts: every file is checked first
    (check_inputs), and rank 0 writes the caches while the others wait (the one collective of
    data loading; every rank calls it at the same point). A test file that is not there is not
    an error here: predict reports it (a malformed one is)."""
    check_inputs(ctx, splits)
    problems = []
    with ctx.accelerator.main_process_first():
        for source in tokenizer_sources(ctx):
            for task, spec in ctx.specs.items():
                for split in [s for s in spec.splits if s.startswith(splits)]:
                    try:
                        ctx.encoded(task, split, source)
                    except DataError as e:  # a row's problem (check_inputs saw every file's start)
                        if not (split.startswith("test") and not split_path(spec, split, ctx.cfg.data.root).is_file()):
                            problems.append(e)
            if problems:
                break
    raise_problems(problems)
    if any("train".startswith(p) for p in splits):
        for task in ctx.unlabeled_tasks():  # refused here, not when the student's training starts
            if ctx.from_train(task) is not None:
                ctx.train_set(task)


def data_report(ctx: RunContext) -> dict:
    """Per task: examples used / available per split, truncations, skipped rows, notes."""
    rep = {}
    for t, spec in ctx.specs.items():
        r = {"note": spec.note} if spec.note else {}
        for split in spec.splits:
            try:
                d = ctx.encoded(t, split)
            except DataError as e:  # only test files may be absent (prepare_data checked the rest)
                r[split] = {"missing": str(e)}
                continue
            used = len(ctx.train_set(t).indices) if split == "train" else len(d)
            r[split] = {"file": d.meta["path"], "examples": len(d), "used": used,
                        "truncated": d.meta["n_truncated"], "skipped_rows": len(d.meta["skipped_rows"])}
        rep[t] = r
    return rep
