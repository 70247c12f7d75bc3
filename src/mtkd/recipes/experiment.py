"""Recipe: the paper's Table 3 from one config, the report of a run whose `stages` list teach or
distill (recipes/pipeline.py runs its stages).

For each seed: single-task fine-tuning (the BERT row), vanilla MT-DNN (MTL + fine-tune), the teacher
ensembles (recipes/teach.py) and MT-DNN-KD (recipes/distill.py); with kd.unlabeled, a second student
from the same teachers, "MT-DNN-KD + unlabeled text" (seed-S/distill_unlabeled), beside the paper's
(seed-S/distill). The paper's student trains on MT-DNN's batches in MT-DNN's order (same tasks,
sizes and seed). Every evaluation keeps its per-example dev predictions
(seed-S/eval/<system>/predictions.npz), from which the paired bootstrap intervals of each student
(and the ensemble) minus MT-DNN are computed. Writes DIR/results.json, DIR/results.md,
DIR/charts/<task>.png and charts/paired_differences.png (mtkd.report).
"""

from __future__ import annotations

import json
from pathlib import Path

from mtkd.config import RunConfig, to_dict
from mtkd.metrics import dev_and_test, report_layout
from mtkd.report import SYSTEMS, aggregate, compare, paired_intervals, targets, write_results
from mtkd.task_data import TaskData


def results(cfg: RunConfig, data: TaskData, evaluated: dict[str, list[dict]], out_dir: Path, main: bool) -> dict:
    """results.json's content from every seed's evaluation of each system (`evaluated`: system ->
    one metrics.json per seed; the comparison is over dev); rank 0 adds the timings, config,
    intervals and targets and writes the report."""
    per_seed = {s: [dev_and_test(r)[0] for r in evaluated.get(s, [])] for s in SYSTEMS}
    out = aggregate(per_seed, cfg.seeds)
    out["report_layout"] = report_layout(data.specs)  # which dev reports make each task's score
    out["comparison"] = compare(out["systems"], cfg.kd.teacher_tasks, out["report_layout"])
    out["per_seed"] = {s: {str(seed): r for seed, r in zip(cfg.seeds, runs)} for s, runs in per_seed.items() if runs}
    if main:
        timings_path = out_dir / "timings.json"
        timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
        out.update(timings=timings, config=to_dict(cfg), notes={t: s.note for t, s in data.specs.items() if s.note})
        out.update(paired_intervals(data.specs, out, {seed: out_dir / f"seed-{seed}" for seed in cfg.seeds}))
        out["targets"] = targets(out, cfg.kd.teacher_tasks)
        write_results(out, out_dir)
    return out
