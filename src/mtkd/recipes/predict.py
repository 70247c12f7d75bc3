"""Recipe: test-set predictions in the GLUE leaderboard layout, zipped as submission.zip.

One file per leaderboard entry (CoLA.tsv ... AX.tsv): header `index\\tprediction`, label names,
STS-B clipped to [0, 5]. AX is predicted with the MNLI head. Entries whose test file is not
available are listed in MISSING.txt inside the zip (and returned). Under several processes every
rank predicts its share; rank 0 writes.
"""

from __future__ import annotations

import logging
from pathlib import Path

from mtkd.errors import DataError
from mtkd.metrics import predictions_from_logits, write_submission_file, zip_submission
from mtkd.recipes.context import RunContext

log = logging.getLogger(__name__)


def run(ctx: RunContext, models: dict[str, Path], out: Path) -> list[str]:
    """models: task -> model folder (AX falls back to its head_of task's model). Returns the missing entries."""
    if ctx.planning:
        return []
    sub = out / "submission"
    if ctx.main:
        sub.mkdir(parents=True, exist_ok=True)
    loaded = {}
    for task, spec in ctx.specs.items():
        folder = models.get(task) or models.get(spec.head_of or "")
        if folder is None:
            continue
        for split in spec.eval_splits("test"):
            try:
                data = ctx.encoded(task, split, ctx.model_tokenizer(folder))
            except DataError as e:  # a test file that is not here: report it, predict the rest
                if ctx.main:
                    log.warning("no test predictions for %s/%s: %s", task, split, e)
                continue
            if folder not in loaded:
                loaded = {folder: ctx.load_model(folder)}
            logits = ctx.logits(loaded[folder], data, task)
            preds = predictions_from_logits(spec, logits, data.groups)
            if ctx.main:
                write_submission_file(sub / f"{spec.report_name(split)}.tsv", data.ids, preds, spec)
    missing: list[str] = []
    if ctx.main:
        missing = zip_submission(sub, out / "submission.zip")
        if missing:
            log.warning("submission.zip lacks %s (no test file here)", ", ".join(missing))
    return missing
