"""Recipe: test-set predictions in the GLUE leaderboard layout, zipped as submission.zip.

One file per leaderboard entry (CoLA.tsv ... AX.tsv): header `index\\tprediction`, label names,
STS-B clipped to [0, 5]. AX is predicted with the MNLI head. Entries whose test file is not
available are listed in MISSING.txt inside the zip (and returned).
"""

from __future__ import annotations

import logging
from pathlib import Path

from mtkd.errors import DataError
from mtkd.loop import predict_logits
from mtkd.metrics import predictions_from_logits, write_submission_file, zip_submission
from mtkd.recipes.context import RunContext

log = logging.getLogger(__name__)


def run(ctx: RunContext, models: dict[str, Path], out: Path) -> list[str]:
    """models: task -> model folder (AX falls back to its head_of task's model). Returns the missing entries."""
    missing: list[str] = []
    if ctx.main:
        sub = out / "submission"
        sub.mkdir(parents=True, exist_ok=True)
        cache = {}
        for task, spec in ctx.specs.items():
            folder = models.get(task) or models.get(spec.head_of or "")
            if folder is None:
                continue
            for split in spec.eval_splits("test"):
                try:
                    data = ctx.encoded(task, split)
                except DataError as e:  # a test file that is not here: report it, predict the rest
                    log.warning("no test predictions for %s/%s: %s", task, split, e)
                    continue
                if folder not in cache:
                    cache = {folder: ctx.load_model(folder).to(ctx.accelerator.device)}
                logits = predict_logits(cache[folder], data, task, None, ctx.cfg.predict.batch_size,
                                        max_tokens=ctx.cfg.predict.max_tokens)
                groups = data.groups if data.groups is not None else None
                preds = predictions_from_logits(spec, logits, groups)
                write_submission_file(sub / f"{spec.report_name(split)}.tsv", data.ids, preds, spec)
        missing = zip_submission(sub, out / "submission.zip")
        if missing:
            log.warning("submission.zip lacks %s (no test file here)", ", ".join(missing))
    ctx.accelerator.wait_for_everyone()
    return missing
