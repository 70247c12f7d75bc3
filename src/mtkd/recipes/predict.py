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
from mtkd.model import load_model
from mtkd.recipes.runner import Runner
from mtkd.task_data import TaskData
from mtkd.tasks import GLUE_TASK_NAMES

log = logging.getLogger(__name__)


def is_glue(specs: dict) -> bool:
    """Whether the config has a GLUE task (then the predictions make a leaderboard submission)."""
    return any(t in GLUE_TASK_NAMES for t in specs)


def predict(data: TaskData, runner: Runner, models: dict[str, Path], out: Path, copy_to: Path | None = None
            ) -> list[str]:
    """models: task -> model folder (AX falls back to its head_of task's model); `copy_to`: a folder
    that gets a copy (the run folder: submission.zip, or the predictions folder). Returns the missing
    leaderboard entries (none without a GLUE task)."""
    sub = out / ("submission" if is_glue(data.specs) else "predictions")
    if runner.main:
        sub.mkdir(parents=True, exist_ok=True)
    loaded = {}
    for task, spec in data.specs.items():
        folder = models.get(task) or models.get(spec.head_of or "")
        if folder is None:
            continue
        for split in spec.eval_splits("test"):
            try:
                encoded = data.encoded(task, split, runner.stages.model_tokenizer(folder))
            except DataError as e:  # a test file that is not here: report it, predict the rest
                if runner.main:
                    log.warning("no test predictions for %s/%s: %s", task, split, e)
                continue
            if folder not in loaded:
                loaded = {folder: load_model(folder, data.specs, runner.device)}
            logits = runner.logits(loaded[folder], encoded, task)
            preds = kind_of(spec).predictions(logits, encoded.groups)
            if runner.main:
                write_submission_file(sub / f"{spec.report_name(split)}.tsv", encoded.ids, preds, spec)
    missing: list[str] = []
    if runner.main and is_glue(data.specs):
        missing = zip_submission(sub, out / "submission.zip")
        if missing:
            log.warning("submission.zip lacks %s (no test file here)", ", ".join(missing))
    elif runner.main:
        log.info("test predictions: %s (%d files)", sub, len(list(sub.glob("*.tsv"))))
    if runner.main and copy_to is not None and is_glue(data.specs):
        (copy_to / "submission.zip").write_bytes((out / "submission.zip").read_bytes())
    elif runner.main and copy_to is not None:
        shutil.copytree(sub, copy_to / "predictions", dirs_exist_ok=True)
    return missing
