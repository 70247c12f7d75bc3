"""Recipe: dev-set metrics (x100) per task, from each task's fine-tuned model.

`models` maps task -> model folder (a fine-tuned model per task, or one MTL model for all).
Writes DIR/metrics.json ({report name: {metric: value}}) and DIR/metrics.md (with the GLUE average).
"""

from __future__ import annotations

import json
from pathlib import Path

from mtkd.loop import predict_logits
from mtkd.metrics import compute_metrics, markdown_table, predictions_from_logits
from mtkd.recipes.context import RunContext


def run(ctx: RunContext, models: dict[str, Path], out: Path | None = None) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    if ctx.main:
        cache = {}
        for task, folder in models.items():
            spec = ctx.specs[task]
            if not spec.metrics:
                continue
            if folder not in cache:
                cache = {folder: ctx.load_model(folder).to(ctx.accelerator.device)}
            model = cache[folder]
            for name, (data, idx) in ctx.dev_sets(task).items():
                logits = predict_logits(model, data, task, idx, ctx.cfg.predict.batch_size,
                                        max_tokens=ctx.cfg.predict.max_tokens)
                groups = data.groups[idx] if data.groups is not None else None
                preds = predictions_from_logits(spec, logits, groups)
                results[name] = compute_metrics(spec, data.labels[idx], preds)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "metrics.json").write_text(json.dumps(results, indent=2))
            notes = {t: s.note for t, s in ctx.specs.items() if s.note}
            (out / "metrics.md").write_text(markdown_table(results, notes))
    ctx.accelerator.wait_for_everyone()
    return results
