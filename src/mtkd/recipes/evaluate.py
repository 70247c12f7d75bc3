"""Recipe: dev-set metrics (x100) per task, from each task's fine-tuned model.

`models` maps task -> model folder (a fine-tuned model per task, or one MTL model for all). Each
model reads the data through its own tokenizer. Under several processes every rank predicts its
share of each dev set; all ranks return the same results, rank 0 writes them.
Writes DIR/metrics.json ({report name: {metric: value}}) and DIR/metrics.md (with the GLUE average).
"""

from __future__ import annotations

import json
from pathlib import Path

from mtkd.metrics import markdown_table, score_split
from mtkd.recipes.context import RunContext


def run(ctx: RunContext, models: dict[str, Path], out: Path | None = None) -> dict[str, dict[str, float]]:
    results: dict[str, dict[str, float]] = {}
    if ctx.planning:
        return results
    loaded = {}
    for task, folder in models.items():
        spec = ctx.specs[task]
        if not spec.metrics:
            continue
        if folder not in loaded:
            loaded = {folder: ctx.load_model(folder)}  # one model in memory at a time
        model = loaded[folder]
        for name, (data, idx) in ctx.dev_sets(task, ctx.model_tokenizer(folder)).items():
            groups = data.groups[idx] if data.groups is not None else None
            results[name] = score_split(spec, ctx.logits(model, data, task, idx), data.labels[idx], groups)
    if out is not None and ctx.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(results, indent=2))
        notes = {t: s.note for t, s in ctx.specs.items() if s.note}
        (out / "metrics.md").write_text(markdown_table(results, notes, ctx.specs))
    return results
