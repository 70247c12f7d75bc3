"""Recipe: the paper's Table 3 from one config (pipeline.py runs it when `stages` lists teach or distill).

For each seed: single-task fine-tuning (the BERT row), vanilla MT-DNN (MTL + fine-tune), the teacher
ensembles (recipes/teach.py) and MT-DNN-KD (recipes/distill.py); with kd.unlabeled, a second student
from the same teachers, "MT-DNN-KD + unlabeled text" (seed-S/distill_unlabeled), beside the paper's
(seed-S/distill). The paper's student trains on MT-DNN's batches in MT-DNN's order (same tasks,
sizes and seed). Every evaluation keeps its per-example dev predictions
(seed-S/eval/<system>/predictions.npz), from which the paired bootstrap intervals of each student
(and the ensemble) minus MT-DNN are computed. Writes DIR/results.json, DIR/results.md,
DIR/charts/<task>.png and charts/paired_differences.png (mtkd.report); each stage is cached
(DONE.json).
"""

from __future__ import annotations

import json
from pathlib import Path

from mtkd.config import Stage
from mtkd.metrics import PREDICTIONS_FILE, dev_and_test, report_layout
from mtkd.recipes import distill, evaluate, finetune, mtl, predict, teach
from mtkd.recipes.context import RunContext
from mtkd.report import SYSTEMS, aggregate, compare, paired_intervals, targets, write_results

# the students' folders in seed-S/: the paper's MT-DNN-KD, and the extra row trained on kd.unlabeled's text too
STUDENT_FOLDERS = {"mtdnn_kd": "distill", "mtdnn_kd_unlabeled": "distill_unlabeled"}


def run_experiment(ctx: RunContext, timed) -> dict:
    """Every seed's stages, then (unless planning) the report; `timed(name, fn)` runs a stage and
    records its wall time. Returns results.json's content ({} while planning)."""
    per_seed: dict[str, list[dict]] = {s: [] for s in SYSTEMS}
    for seed in ctx.cfg.seeds:
        _run_seed(ctx, seed, timed, per_seed)
    if ctx.stages.planning:
        return {}
    return _results(ctx, per_seed)


def _run_seed(ctx: RunContext, seed: int, timed, per_seed: dict[str, list[dict]]) -> None:
    """One seed's systems, trained and evaluated; each system's dev results appended to `per_seed`."""
    cfg, out_dir = ctx.cfg, ctx.out_dir
    stages = set(cfg.stages)
    tasks = cfg.finetune_tasks or ctx.train_tasks()
    seed_dir = out_dir / f"seed-{seed}"
    if Stage.SINGLE_TASK in stages:
        timed(f"seed-{seed}/single_task", lambda: finetune.run(ctx, seed_dir / "single_task", seed, None, cfg=cfg.mtl,
                                                               tasks=tasks, desc="single-task"))
        per_seed["single_task"].append(_evaluate(ctx, {t: seed_dir / "single_task" / t / "model" for t in tasks},
                                                 seed_dir / "eval" / "single_task"))
    if Stage.MTL in stages:
        timed(f"seed-{seed}/mtl", lambda: mtl.run(ctx, seed_dir / "mtl", seed))
        timed(f"seed-{seed}/finetune", lambda: finetune.run(ctx, seed_dir / "finetune", seed, seed_dir / "mtl" / "model",
                                                            tasks=tasks))
        per_seed["mtdnn"].append(_evaluate(ctx, {t: seed_dir / "finetune" / t / "model" for t in tasks},
                                           seed_dir / "eval" / "mtdnn"))
    if Stage.TEACH in stages or Stage.DISTILL in stages:
        summary = timed(f"seed-{seed}/teach", lambda: teach.run(ctx, seed_dir / "teach", seed,
                                                                 mtdnn_mtl=seed_dir / "mtl" / "model"))
        if not ctx.stages.planning:
            per_seed["ensemble"].append(summary["ensemble_dev"])
            _keep_ensemble_predictions(ctx, seed_dir)
    if Stage.DISTILL in stages:
        # the paper's MT-DNN-KD (teacher tasks' soft targets only) and, with kd.unlabeled, the extra
        # row "MT-DNN-KD + unlabeled text" from the same teachers, beside it
        soft_dir = seed_dir / "teach" / "soft_targets"
        models = timed(f"seed-{seed}/distill", lambda: distill.run(ctx, seed_dir / STUDENT_FOLDERS["mtdnn_kd"], seed,
                                                                   soft_dir))
        per_seed["mtdnn_kd"].append(_evaluate(ctx, models, seed_dir / "eval" / "mtdnn_kd"))
        if ctx.unlabeled_tasks():
            unlabeled = timed(f"seed-{seed}/distill_unlabeled", lambda: distill.run(
                ctx, seed_dir / STUDENT_FOLDERS["mtdnn_kd_unlabeled"], seed, soft_dir,
                unlabeled_dir=seed_dir / "teach" / teach.UNLABELED_DIR / "soft_targets"))
            per_seed["mtdnn_kd_unlabeled"].append(_evaluate(ctx, unlabeled, seed_dir / "eval" / "mtdnn_kd_unlabeled"))
    if Stage.PREDICT in stages and seed == cfg.seeds[0] and cfg.predict.submission and stages & {Stage.DISTILL, Stage.MTL}:
        # the leaderboard files of the model the experiment is about: the student, else MT-DNN
        served = dict(models) if Stage.DISTILL in stages else {t: seed_dir / "finetune" / t / "model" for t in tasks}
        served.update({t: served[s.head_of] for t, s in ctx.specs.items() if s.head_of in served})
        timed(f"seed-{seed}/predict", lambda: predict.run(ctx, served, seed_dir))
        if ctx.main and not ctx.stages.planning:
            predict.copy_outputs(ctx, seed_dir, out_dir)


def _results(ctx: RunContext, per_seed: dict[str, list[dict]]) -> dict:
    """results.json's content from every seed's dev results; rank 0 adds the timings, config,
    intervals and targets and writes the report."""
    cfg, out_dir = ctx.cfg, ctx.out_dir
    results = aggregate(per_seed, cfg.seeds)
    results["report_layout"] = report_layout(ctx.specs)  # which dev reports make each task's score
    results["comparison"] = compare(results["systems"], cfg.kd.teacher_tasks, results["report_layout"])
    results["per_seed"] = {s: {str(seed): r for seed, r in zip(cfg.seeds, runs)} for s, runs in per_seed.items() if runs}
    if ctx.main:
        timings_path = out_dir / "timings.json"
        timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
        results.update(timings=timings, config=ctx.config_dict(),
                       notes={t: s.note for t, s in ctx.specs.items() if s.note})
        results.update(paired_intervals(ctx.specs, results, {seed: out_dir / f"seed-{seed}" for seed in cfg.seeds}))
        results["targets"] = targets(results, cfg.kd.teacher_tasks)
        write_results(results, out_dir)
    return results


def _keep_ensemble_predictions(ctx: RunContext, seed_dir: Path) -> None:
    """The ensemble's per-example dev predictions (teach.py keeps them) as those of the "ensemble"
    system's evaluation, where the paired intervals look for every system's."""
    src = seed_dir / "teach" / teach.ENSEMBLE_PREDICTIONS
    if ctx.main and src.is_file():
        dst = seed_dir / "eval" / "ensemble" / PREDICTIONS_FILE
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())


def _evaluate(ctx, models, out):
    """One system's dev results (every rank gets them); its labelled test splits are in its
    metrics.json, not in the Table 3 comparison (which is over dev)."""
    results = evaluate.run(ctx, models, out, test=True)
    return dev_and_test(results)[0]
