"""Recipe: test-set predictions, one TSV per test split: header `index\\tprediction`, label names,
regression scores clipped to the task's label range (STS-B [0, 5]).

A config with a GLUE task writes them in the GLUE leaderboard layout to DIR/submission/ (CoLA.tsv
... AX.tsv, AX predicted with the MNLI head) and zips them as DIR/submission.zip; leaderboard
entries whose test file is not available are listed in MISSING.txt inside the zip (and returned).
A config without a GLUE task writes DIR/predictions/<report name>.tsv and no zip: there is no
leaderboard to submit to, so nothing is reported missing. Under several processes every rank
predicts its share; rank 0 writes.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from mtkd.errors import DataError
from mtkd.heads import kind_of
from mtkd.metrics import write_submission_file, zip_submission
from mtkd.recipes.context import RunContext
from mtkd.tasks import GLUE_TASK_NAMES

log = logging.getLogger(__name__)


def is_glue(ctx: RunContext) -> bool:
    """Whether the config has a GLUE task (then the predictions make a leaderboard submission)."""
    return any(t in GLUE_TASK_NAMES for t in ctx.specs)


def folder_name(ctx: RunContext) -> str:
    return "submission" if is_glue(ctx) else "predictions"


def run(ctx: RunContext, models: dict[str, Path], out: Path) -> list[str]:
    """models: task -> model folder (AX falls back to its head_of task's model). Returns the
    missing leaderboard entries (none without a GLUE task)."""
    if ctx.stages.planning:
        return []
    sub = out / folder_name(ctx)
    if ctx.main:
        sub.mkdir(parents=True, exist_ok=True)
    loaded = {}
    for task, spec in ctx.specs.items():
        folder = models.get(task) or models.get(spec.head_of or "")
        if folder is None:
            continue
        for split in spec.eval_splits("test"):
            try:
                data = ctx.encoded(task, split, ctx.stages.model_tokenizer(folder))
            except DataError as e:  # a test file that is not here: report it, predict the rest
                if ctx.main:
                    log.warning("no test predictions for %s/%s: %s", task, split, e)
                continue
            if folder not in loaded:
                loaded = {folder: ctx.load_model(folder)}
            logits = ctx.logits(loaded[folder], data, task)
            preds = kind_of(spec).predictions(logits, data.groups)
            if ctx.main:
                write_submission_file(sub / f"{spec.report_name(split)}.tsv", data.ids, preds, spec)
    missing: list[str] = []
    if ctx.main and is_glue(ctx):
        missing = zip_submission(sub, out / "submission.zip")
        if missing:
            log.warning("submission.zip lacks %s (no test file here)", ", ".join(missing))
    elif ctx.main:
        log.info("test predictions: %s (%d files)", sub, len(list(sub.glob("*.tsv"))))
    return missing


def copy_outputs(ctx: RunContext, src: Path, dst: Path) -> None:
    """The run folder's copy of one seed's predictions: submission.zip, or (no GLUE task) the
    predictions folder."""
    if is_glue(ctx):
        (dst / "submission.zip").write_bytes((src / "submission.zip").read_bytes())
    else:
        shutil.copytree(src / "predictions", dst / "predictions", dirs_exist_ok=True)
