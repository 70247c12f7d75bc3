"""Recipe: MT-DNN-KD, the distilled student (paper Section 3), and the Table 3 experiment.

run(): MTL with Algorithm 1 where a task with soft targets is trained on
    (1 - w) * hard cross-entropy (Eq. 2) + w * soft cross-entropy (Eq. 4)   (w = kd.soft_weight = 0.5)
and every other task keeps its hard loss; then per-task fine-tuning (by default with the same KD
loss on teacher tasks, kd.finetune_with_soft). The student's encoder may differ from the teachers'
(kd.student, e.g. fewer layers): soft targets are per example, so nothing else changes.
Refuses soft targets written for other data (fingerprint) or missing training examples.

run_experiment(): the paper's Table 3 from one config: single-task fine-tuning (the BERT row),
vanilla MT-DNN (MTL + fine-tune), the teacher ensembles and MT-DNN-KD, for each seed; with
kd.unlabeled, a second student from the same teachers, "MT-DNN-KD + unlabeled text"
(seed-S/distill_unlabeled), beside the paper's (seed-S/distill). The paper's student trains on
MT-DNN's batches in MT-DNN's order (same tasks, sizes and seed). Every evaluation keeps its
per-example dev predictions (seed-S/eval/<system>/predictions.npz), from which the paired
bootstrap intervals of each student (and the ensemble) minus MT-DNN are computed. Writes
DIR/results.json, DIR/results.md, DIR/charts/<task>.png and charts/paired_differences.png; each
stage is cached (DONE.json).

combine(): the same outputs from several runs of one config that differ only in their seeds
(`mtkd combine A/results.json B/results.json --output-dir DIR`), e.g. a second seed run later;
the intervals come from the predictions in each results.json's run folder.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import torch

from mtkd.config import Stage
from mtkd.errors import ConfigError, MtkdError
from mtkd.identity import changed
from mtkd.losses import kd_loss, task_loss
from mtkd.metrics import dev_and_test, report_layout, task_scores
from mtkd.recipes import evaluate, finetune, mtl, predict, teach
from mtkd.recipes.context import RunContext
from mtkd.soft_targets import SoftTargets
from mtkd.stats import Evaluated, paired_bootstrap
from mtkd.tasks import glue_tasks

log = logging.getLogger(__name__)

SYSTEMS = ("single_task", "mtdnn", "ensemble", "mtdnn_kd", "mtdnn_kd_unlabeled")
SYSTEM_NAMES = {"single_task": "Single-task fine-tuning", "mtdnn": "MT-DNN", "ensemble": "MT-DNN ensemble (teachers)",
                "mtdnn_kd": "MT-DNN-KD", "mtdnn_kd_unlabeled": "MT-DNN-KD + unlabeled text"}
CHART_COLORS = {"single_task": "#999999", "mtdnn": "#4c72b0", "ensemble": "#dd8452", "mtdnn_kd": "#55a868",
                "mtdnn_kd_unlabeled": "#8172b3"}
CHART_LABELS = {"single_task": "single-task", "mtdnn": "MT-DNN", "ensemble": "ensemble\n(teachers)", "mtdnn_kd": "MT-DNN-KD",
                "mtdnn_kd_unlabeled": "MT-DNN-KD\n+ unlabeled"}
# the students' folders in seed-S/: the paper's MT-DNN-KD, and the extra row trained on kd.unlabeled's text too
STUDENT_FOLDERS = {"mtdnn_kd": "distill", "mtdnn_kd_unlabeled": "distill_unlabeled"}
KD_SYSTEMS = {"mtdnn_kd": "kd", "mtdnn_kd_unlabeled": "kd_unlabeled"}  # system -> its keys' prefix in "comparison"


def kd_loss_factory(ctx: RunContext, soft_dir: Path, unlabeled_dir: Path | None = None):
    """loss_fn factory for mtkd.loop.train: the KD loss on teacher tasks (soft targets in `soft_dir`)
    and, with `unlabeled_dir`, on kd.unlabeled's pseudo-tasks (soft loss only); the hard loss
    elsewhere. Soft targets are aligned to each split's row order once, so a batch's `index` looks them up."""
    kd = ctx.cfg.kd
    tables = {}
    sources = [(t, soft_dir) for t in kd.teacher_tasks] + [(t, unlabeled_dir) for t in ctx.unlabeled_tasks() if unlabeled_dir]
    for task, folder in sources:
        ts = ctx.train_set(task)
        tables[task] = torch.from_numpy(SoftTargets.load(folder, task).aligned_to(ts.data, ts.indices))

    def factory(model):
        def loss_fn(task, logits, batch):
            kind = model.tasks[task].head
            if task in tables:
                soft = tables[task][batch["index"].cpu()].to(logits.device)
                return kd_loss(kind, logits, batch.get("labels"), soft, kd.soft_weight, kd.temperature)
            return task_loss(model.tasks[task], logits, batch)
        return loss_fn
    return factory


def _targets_key(ctx: RunContext, folder: Path, task: str, field: str) -> str | None:
    """The key of the stage of this run that writes `folder`, else (soft targets made by another run)
    the key their provenance names."""
    key = ctx.stage_key(folder)
    if key is None and task is not None:
        key = SoftTargets.load(folder, task).provenance.get(field)
    return key


def soft_loss_identity(ctx: RunContext, soft_dir: Path, unlabeled_dir: Path | None = None) -> dict:
    """What the student's loss depends on: the teachers (their stage's key), the KD settings and,
    for the student with unlabeled text, that text's soft targets."""
    kd = ctx.cfg.kd
    teachers = _targets_key(ctx, soft_dir, kd.teacher_tasks[0] if kd.teacher_tasks else None, "teacher_key")
    out = {"teachers": teachers, "soft_weight": kd.soft_weight, "temperature": kd.temperature,
           "soft_tasks": list(kd.teacher_tasks) + (list(ctx.unlabeled_tasks()) if unlabeled_dir is not None else [])}
    if unlabeled_dir is not None:
        out["unlabeled_targets"] = _targets_key(ctx, unlabeled_dir, next(iter(ctx.unlabeled_tasks()), None), "unlabeled_key")
    return out


def student_tasks(ctx: RunContext, unlabeled: bool) -> list[str]:
    """The tasks of a student's MTL: those of MT-DNN's MTL, in the same order (so the paper's student
    sees MT-DNN's batches in MT-DNN's order at the same seed), then, for the student with unlabeled
    text, kd.unlabeled's pseudo-tasks (soft loss only: no labels)."""
    return ctx.train_tasks() + (list(ctx.unlabeled_tasks()) if unlabeled else [])


def run(ctx: RunContext, out: Path, seed: int, soft_dir: Path, unlabeled_dir: Path | None = None) -> dict[str, Path]:
    """Train the student (MTL with soft targets, then fine-tune). Returns task -> model folder.
    Without `unlabeled_dir` this is the paper's MT-DNN-KD; with it (the soft targets of
    kd.unlabeled's text, teach.label_unlabeled) the student also trains on that text."""
    if unlabeled_dir is not None and not ctx.unlabeled_tasks():
        raise ConfigError("distill: unlabeled soft targets given, but kd.unlabeled is empty")
    factory = None if ctx.planning else kd_loss_factory(ctx, soft_dir, unlabeled_dir)
    loss_identity = soft_loss_identity(ctx, soft_dir, unlabeled_dir)
    student = ctx.cfg.kd.student
    mtl.run(ctx, out / "mtl", seed, tasks=student_tasks(ctx, unlabeled_dir is not None), loss_fn_factory=factory,
            loss_identity=loss_identity, encoder_cfg=student,
            desc="student mtl" + (" + unlabeled text" if unlabeled_dir is not None else ""))
    with_soft = ctx.cfg.kd.finetune_with_soft
    finetune.run(ctx, out / "finetune", seed, out / "mtl" / "model", loss_fn_factory=factory if with_soft else None,
                 loss_identity=loss_identity if with_soft else None, desc="student finetune")
    return {t: out / "finetune" / t / "model" for t in (ctx.cfg.finetune_tasks or ctx.train_tasks())}


# ------------------------------------------------------------------------------- the experiment
def run_experiment(ctx: RunContext, timed) -> dict:
    cfg, out_dir = ctx.cfg, ctx.out_dir
    stages = set(cfg.stages)
    tasks = cfg.finetune_tasks or ctx.train_tasks()
    per_seed: dict[str, list[dict]] = {s: [] for s in SYSTEMS}
    for seed in cfg.seeds:
        sd = out_dir / f"seed-{seed}"
        if Stage.SINGLE_TASK in stages:
            timed(f"seed-{seed}/single_task", lambda: finetune.run(ctx, sd / "single_task", seed, None, cfg=cfg.mtl,
                                                                   tasks=tasks, desc="single-task"))
            per_seed["single_task"].append(_evaluate(ctx, {t: sd / "single_task" / t / "model" for t in tasks}, sd / "eval" / "single_task"))
        if Stage.MTL in stages:
            timed(f"seed-{seed}/mtl", lambda: mtl.run(ctx, sd / "mtl", seed))
            timed(f"seed-{seed}/finetune", lambda: finetune.run(ctx, sd / "finetune", seed, sd / "mtl" / "model", tasks=tasks))
            per_seed["mtdnn"].append(_evaluate(ctx, {t: sd / "finetune" / t / "model" for t in tasks}, sd / "eval" / "mtdnn"))
        if Stage.TEACH in stages or Stage.DISTILL in stages:
            summary = timed(f"seed-{seed}/teach", lambda: teach.run(ctx, sd / "teach", seed))
            if not ctx.planning:
                per_seed["ensemble"].append(summary["ensemble_dev"])
                _keep_ensemble_predictions(ctx, sd)
        if Stage.DISTILL in stages:
            # the paper's MT-DNN-KD (teacher tasks' soft targets only) and, with kd.unlabeled, the extra
            # row "MT-DNN-KD + unlabeled text" from the same teachers, beside it
            models = timed(f"seed-{seed}/distill", lambda: run(ctx, sd / STUDENT_FOLDERS["mtdnn_kd"], seed,
                                                              sd / "teach" / "soft_targets"))
            per_seed["mtdnn_kd"].append(_evaluate(ctx, models, sd / "eval" / "mtdnn_kd"))
            if ctx.unlabeled_tasks():
                unlabeled = timed(f"seed-{seed}/distill_unlabeled", lambda: run(
                    ctx, sd / STUDENT_FOLDERS["mtdnn_kd_unlabeled"], seed, sd / "teach" / "soft_targets",
                    unlabeled_dir=sd / "teach" / teach.UNLABELED_DIR / "soft_targets"))
                per_seed["mtdnn_kd_unlabeled"].append(_evaluate(ctx, unlabeled, sd / "eval" / "mtdnn_kd_unlabeled"))
        if Stage.PREDICT in stages and seed == cfg.seeds[0] and cfg.predict.submission and stages & {Stage.DISTILL, Stage.MTL}:
            # the leaderboard files of the model the experiment is about: the student, else MT-DNN
            served = dict(models) if Stage.DISTILL in stages else {t: sd / "finetune" / t / "model" for t in tasks}
            served.update({t: served[s.head_of] for t, s in ctx.specs.items() if s.head_of in served})
            timed(f"seed-{seed}/predict", lambda: predict.run(ctx, served, sd))
            if ctx.main and not ctx.planning:
                predict.copy_outputs(ctx, sd, out_dir)
    if ctx.planning:
        return {}
    results = aggregate(per_seed, cfg.seeds)
    results["report_layout"] = report_layout(ctx.specs)  # which dev reports make each task's score
    results["comparison"] = compare(results["systems"], cfg.kd.teacher_tasks, results["report_layout"])
    results["per_seed"] = {s: {str(seed): r for seed, r in zip(cfg.seeds, runs)} for s, runs in per_seed.items() if runs}
    if ctx.main:
        timings = json.loads((out_dir / "timings.json").read_text()) if (out_dir / "timings.json").is_file() else {}
        results.update(timings=timings, config=ctx.config_dict(),
                       notes={t: s.note for t, s in ctx.specs.items() if s.note})
        results.update(paired_intervals(ctx.specs, results, {seed: out_dir / f"seed-{seed}" for seed in cfg.seeds}))
        results["targets"] = targets(results, cfg.kd.teacher_tasks)
        write_results(results, out_dir)
    return results


def _keep_ensemble_predictions(ctx: RunContext, sd: Path) -> None:
    """The ensemble's per-example dev predictions (teach.py keeps them) as those of the "ensemble"
    system's evaluation, where the paired intervals look for every system's."""
    src = sd / "teach" / teach.ENSEMBLE_PREDICTIONS
    if ctx.main and src.is_file():
        dst = sd / "eval" / "ensemble" / evaluate.PREDICTIONS_FILE
        dst.parent.mkdir(parents=True, exist_ok=True)
        dst.write_bytes(src.read_bytes())


def write_results(results: dict, out_dir: Path) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2))
    (out_dir / "results.md").write_text(results_markdown(results))
    plot_charts(results, out_dir / "charts")
    log.info("results:\n%s", results_markdown(results))


def _per_seed_of(path: Path, res: dict) -> dict[str, dict[str, dict]]:
    """{system: {seed: {task: metrics}}} of one results.json (older single-seed files lack per_seed)."""
    if "per_seed" in res:
        return res["per_seed"]
    if len(res.get("seeds", [])) == 1:
        return {s: {str(res["seeds"][0]): v} for s, v in res["systems"].items()}
    raise ConfigError(f"{path}: no 'per_seed' field and {len(res.get('seeds', []))} seeds: cannot recover each seed's numbers")


def combine(paths: list[Path], out_dir: Path) -> dict:
    """Merge the results.json of runs of one config that differ only in `seeds` into one results.json
    (mean ± std over all their seeds), results.md and charts. Refuses other differences and repeated seeds."""
    loaded = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            p = p / "results.json"
        if not p.is_file():
            raise ConfigError(f"{p}: no such results file")
        try:
            loaded.append((p, json.loads(p.read_text())))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{p}, line {e.lineno}: not valid JSON ({e.msg})") from None
    (first_path, first), per_seed, seeds_of = loaded[0], {}, {}
    base_cfg = {k: v for k, v in first.get("config", {}).items() if k != "seeds"}
    for p, res in loaded:
        for field in ("systems", "config", "seeds"):
            if field not in res:
                raise ConfigError(f"{p}: field {field!r} missing: not an experiment's results.json")
        diff = [key for key, _, _ in changed(base_cfg, {k: v for k, v in res["config"].items() if k != "seeds"})]
        if diff:
            raise ConfigError(f"{p}: config differs from {first_path} in {', '.join(diff)}: only seeds may differ")
        for system, runs in _per_seed_of(p, res).items():
            for seed, metrics in runs.items():
                if seed in seeds_of.get(system, {}):
                    raise ConfigError(f"{p}: seed {seed} of {system} is also in {seeds_of[system][seed]}")
                seeds_of.setdefault(system, {})[seed] = p
                per_seed.setdefault(system, {})[seed] = metrics
    seeds = sorted({int(s) for runs in per_seed.values() for s in runs})
    ordered = {s: [per_seed[s][str(seed)] for seed in seeds if str(seed) in per_seed[s]] for s in SYSTEMS if s in per_seed}
    missing = {s: [seed for seed in seeds if str(seed) not in per_seed[s]] for s in ordered}
    if any(missing.values()):
        raise ConfigError("systems missing seeds: " + "; ".join(f"{s}: {m}" for s, m in missing.items() if m))
    results = aggregate(ordered, seeds)
    if "report_layout" in first:
        results["report_layout"] = first["report_layout"]
    results["comparison"] = compare(results["systems"], first["config"].get("kd", {}).get("teacher_tasks", []),
                                    results.get("report_layout"))
    results["per_seed"] = {s: {str(seed): per_seed[s][str(seed)] for seed in seeds} for s in ordered}
    timings = {}
    for _, res in loaded:
        timings.update({k: v for k, v in res.get("timings", {}).items() if k.startswith("seed-")})
    results.update(timings=timings, config={**first["config"], "seeds": seeds}, notes=first.get("notes", {}),
                   combined_from=[str(p) for p, _ in loaded])
    # the paired intervals, from each seed's per-example predictions in the run folder of its results.json
    seed_dirs = {int(seed): p.parent / f"seed-{seed}" for p, res in loaded for seed in res["seeds"]}
    try:
        specs = _interval_specs(first["config"])
    except (MtkdError, OSError) as e:
        results["intervals_note"] = f"the task definitions of {first_path}'s config could not be loaded ({e})"
    else:
        results.update(paired_intervals(specs, results, seed_dirs))
    results["targets"] = targets(results, first["config"].get("kd", {}).get("teacher_tasks", []))
    write_results(results, out_dir)
    return results


def _evaluate(ctx, models, out):
    """One system's dev results (every rank gets them); its labelled test splits are in its
    metrics.json, not in the Table 3 comparison (which is over dev)."""
    results = evaluate.run(ctx, models, out, test=True)
    return dev_and_test(results)[0]


def aggregate(per_seed: dict[str, list[dict]], seeds: list[int]) -> dict:
    """{"systems": {system: {task: {metric: mean}}}, "std": same shape, "seeds": [...]} (x100); a
    nested entry (the labelled test results under "test") is averaged the same way."""
    systems, std = {}, {}
    for name, runs in per_seed.items():
        if runs:
            systems[name], std[name] = _mean_std(runs)
    return {"systems": systems, "std": std, "seeds": list(seeds)}


def _mean_std(runs: list[dict]) -> tuple[dict, dict]:
    mean, std = {}, {}
    for key, first in runs[0].items():
        if any(isinstance(v, dict) for v in first.values()):  # {report: {metric: value}} one level down
            mean[key], std[key] = _mean_std([r[key] for r in runs])
            continue
        mean[key], std[key] = {}, {}
        for m in first:
            vals = [r[key][m] for r in runs]
            mean[key][m] = round(float(np.mean(vals)), 4)
            std[key][m] = round(float(np.std(vals)), 4)
    return mean, std


def _cell_value(metrics: dict[str, float]) -> float:
    return float(np.mean(list(metrics.values())))


MIN_GAIN_FOR_SHARE = 0.5  # points (x100): below this the ensemble's gain is within dev-set rounding noise
SHARE_DEFINITION = ("share = (MT-DNN-KD - MT-DNN) / (ensemble - MT-DNN), per teacher task: how much of the "
                    "ensemble's gain over MT-DNN the student keeps")


def _layout(layout: dict | None) -> dict:
    """Which report names make each task's score (`metrics.report_layout`); default: the GLUE tasks'
    (results.json files written before the layout was recorded)."""
    return layout if layout is not None else report_layout(glue_tasks())


def _beside(layout: dict) -> dict[str, str]:
    """extra evaluation split's report name -> its task."""
    return {r: t for t, lay in layout.items() for r in lay["beside"]}


def compare(systems: dict, teacher_tasks, layout: dict | None = None) -> dict:
    """The paper's Table 3 questions as numbers (x100 points, each task's score = its metrics' mean,
    a task with several dev splits (MNLI-m/mm) scored once on their mean; `metrics.task_scores`):
    MT-DNN-KD vs MT-DNN per task (also on tasks without a teacher), the ensemble's gain over MT-DNN
    on the teacher tasks and the share of it the student keeps, MT-DNN vs single-task. Extra
    evaluation splits of a task (`layout`'s "beside" reports) are compared beside the tasks, never
    counted as tasks."""
    layout = _layout(layout)
    scores = {s: task_scores(r, layout=layout) for s, r in systems.items()}
    beside = _beside(layout)
    extra = {s: {rep: _cell_value(ms) for rep, ms in r.items() if rep in beside and ms} for s, r in systems.items()}

    def diff(a: str, b: str, tasks=None, of=scores) -> dict[str, float]:
        if a not in of or b not in of:
            return {}
        common = [t for t in of[a] if t in of[b] and (tasks is None or t in tasks)]
        return {t: round(of[a][t] - of[b][t], 4) for t in common}

    def wins(d: dict[str, float], tasks=None) -> dict:
        sel = {t: v for t, v in d.items() if tasks is None or t in tasks}
        return {"tasks": sorted(t for t, v in sel.items() if v > 0), "of": len(sel),
                "mean_diff": round(float(np.mean(list(sel.values()))), 4) if sel else None}

    teachers = set(teacher_tasks)
    out: dict = {}
    students = {}
    for system, prefix in KD_SYSTEMS.items():  # the paper's student, then the one with unlabeled text
        kd = students[prefix] = diff(system, "mtdnn")
        if kd:
            no_teacher = [t for t in kd if t not in teachers]
            w = wins(kd)
            w_free = wins(kd, no_teacher)
            out[f"{prefix}_minus_mtdnn"] = kd
            out[f"{prefix}_beats_mtdnn"] = {**w, "tasks_without_teacher": w_free["tasks"], "of_without_teacher": w_free["of"],
                                            "mean_diff_without_teacher": w_free["mean_diff"]}
            kd_extra = diff(system, "mtdnn", of=extra)
            if kd_extra:
                out[f"{prefix}_minus_mtdnn_extra_splits"] = kd_extra
    ens = diff("ensemble", "mtdnn", teachers)
    if ens:
        out["ensemble_minus_mtdnn"] = ens
        # share of the ensemble's gain the student keeps (SHARE_DEFINITION), per task where the ensemble
        # gained enough for a share to mean something (a 0.1-point gain would turn a 0.7-point
        # difference into -700 %)
        kd = students["kd"]
        out["ensemble_gain_kept"] = {t: round(kd[t] / g, 4) for t, g in ens.items() if g >= MIN_GAIN_FOR_SHARE and t in kd}
        out["ensemble_gain_too_small"] = sorted(t for t, g in ens.items() if g < MIN_GAIN_FOR_SHARE)
        if students.get("kd_unlabeled"):
            kdu = students["kd_unlabeled"]
            out["kd_unlabeled_ensemble_gain_kept"] = {t: round(kdu[t] / g, 4) for t, g in ens.items()
                                                      if g >= MIN_GAIN_FOR_SHARE and t in kdu}
    st = diff("mtdnn", "single_task")
    if st:
        out["mtdnn_minus_single_task"] = st
        out["mtdnn_beats_single_task"] = wins(st)
    return out


def _share_text(share: float | None) -> str:
    """A share as printed: '—' where none is computed, capped at 'over 100%' (the student gained more
    than the ensemble) and 'under -100%' (it lost more than the ensemble gained)."""
    if share is None:
        return "—"
    if share > 1:
        return "over 100%"
    if share < -1:
        return "under -100%"
    return f"{share:.0%}"


def _comparison_lines(c: dict) -> list[str]:
    lines = ["", "The paper's Table 3 questions (differences in points, each task's mean metric):"]
    for system, prefix in KD_SYSTEMS.items():
        if f"{prefix}_beats_mtdnn" not in c:
            continue
        k = c[f"{prefix}_beats_mtdnn"]
        lines.append(f"- {SYSTEM_NAMES[system]} better than MT-DNN on {len(k['tasks'])} of {k['of']} tasks "
                     f"(mean {k['mean_diff']:+.2f}); on tasks without a teacher {len(k['tasks_without_teacher'])} "
                     f"of {k['of_without_teacher']}" + (f" (mean {k['mean_diff_without_teacher']:+.2f})"
                                                         if k["mean_diff_without_teacher"] is not None else "") + ".")
        lines.append("  per task: " + ", ".join(f"{t} {v:+.1f}" for t, v in c[f"{prefix}_minus_mtdnn"].items())
                     + ("; extra evaluation splits (not counted): "
                        + ", ".join(f"{t} {v:+.1f}" for t, v in c[f"{prefix}_minus_mtdnn_extra_splits"].items())
                        if c.get(f"{prefix}_minus_mtdnn_extra_splits") else ""))
    if "ensemble_minus_mtdnn" in c:
        kept = c["ensemble_gain_kept"]
        lines.append("- Ensemble minus MT-DNN on the teacher tasks: "
                     + ", ".join(f"{t} {v:+.1f}" for t, v in c["ensemble_minus_mtdnn"].items())
                     + "; share of that gain the student keeps: "
                     + ", ".join(f"{t} {_share_text(kept.get(t))}" for t in c["ensemble_minus_mtdnn"]) + ".")
        if "kd_unlabeled_ensemble_gain_kept" in c:
            lines.append("  MT-DNN-KD + unlabeled text keeps: " + ", ".join(
                f"{t} {_share_text(c['kd_unlabeled_ensemble_gain_kept'].get(t))}" for t in c["ensemble_minus_mtdnn"]) + ".")
        lines.append(f"  ({SHARE_DEFINITION}; — : ensemble gain < {MIN_GAIN_FOR_SHARE}: share not meaningful; "
                     "over 100%: the student gained more than the ensemble.)")
    if "mtdnn_beats_single_task" in c:
        m = c["mtdnn_beats_single_task"]
        lines.append(f"- MT-DNN better than single-task fine-tuning on {len(m['tasks'])} of {m['of']} tasks "
                     f"(mean {m['mean_diff']:+.2f}): " + ", ".join(f"{t} {v:+.1f}" for t, v in c["mtdnn_minus_single_task"].items()) + ".")
    return lines


def results_markdown(results: dict) -> str:
    """Rows = systems, columns = dev reports + mean over tasks; the best single-model number per
    column in bold (the ensemble is not a single model). With several seeds cells read mean ± std.
    An extra evaluation split of a task is a column beside it, left out of the mean."""
    systems, std = results["systems"], results.get("std", {})
    layout = _layout(results.get("report_layout"))
    beside = _beside(layout)
    tasks = sorted({t for s in systems.values() for t in s}, key=lambda t: list(next(iter(systems.values()))).index(t)
                   if t in next(iter(systems.values())) else 99)
    single = [s for s in systems if s != "ensemble"]
    best = {t: max((_cell_value(systems[s][t]) for s in single if t in systems[s]), default=None) for t in tasks}
    means = {s: float(np.mean(list(task_scores(systems[s], layout=layout).values()))) for s in systems}
    best_mean = max((means[s] for s in single), default=None)
    multi = len(results.get("seeds", [])) > 1

    def header(t):
        metrics = "/".join(next(systems[s][t] for s in systems if t in systems[s]))
        return f"{t} ({metrics}; extra split of {beside[t]})" if t in beside else f"{t} ({metrics})"

    head = "| system | " + " | ".join(header(t) for t in tasks) + " | mean |"
    lines = [head, "|---" * (len(tasks) + 2) + "|"]
    for s in systems:
        cells = []
        for t in tasks:
            if t not in systems[s]:
                cells.append("–")
                continue
            txt = "/".join(f"{v:.1f}" + (f" ± {std[s][t][m]:.1f}" if multi else "") for m, v in systems[s][t].items())
            cells.append(f"**{txt}**" if s != "ensemble" and abs(_cell_value(systems[s][t]) - best[t]) < 1e-9 else txt)
        mean = f"{means[s]:.1f}"
        if s != "ensemble" and best_mean is not None and abs(means[s] - best_mean) < 1e-9:
            mean = f"**{mean}**"
        lines.append(f"| {SYSTEM_NAMES.get(s, s)} | " + " | ".join(cells) + f" | {mean} |")
    lines.append("")
    extras = [t for t in tasks if t in beside]
    lines.append(f"Dev results x100, seeds {results.get('seeds')}; bold: best single model per column "
                 "(the ensemble row covers the teacher tasks only; its mean is over those). Mean = mean over tasks of "
                 "each task's score (its metrics' mean; a task with several dev splits counts once, as their mean)."
                 + (f" Extra evaluation splits ({', '.join(extras)}) are shown beside their task and left out of the "
                    "means and the task counts." if extras else ""))
    if results.get("comparison"):
        lines += _comparison_lines(results["comparison"])
    lines += _interval_lines(results)
    lines += _target_lines(results.get("targets") or [])
    if results.get("notes"):
        lines += ["", "Data notes:"] + [f"- {t}: {n}" for t, n in results["notes"].items()]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------- paired intervals and the issue's targets
BASELINE = "mtdnn"
INTERVAL_SYSTEMS = ("mtdnn_kd", "mtdnn_kd_unlabeled", "ensemble")  # each compared with BASELINE
INTERVAL_REPLICATES, INTERVAL_LEVEL, INTERVAL_BOOTSTRAP_SEED = 1000, 0.95, 0
INTERVAL_METHOD = (f"paired percentile bootstrap over dev examples and seeds (mtkd.stats.paired_bootstrap): each of "
                   f"{INTERVAL_REPLICATES} replicates (random generator seed {INTERVAL_BOOTSTRAP_SEED}) draws the seeds "
                   "with replacement and each dev set's examples with replacement, the same draw for both systems and "
                   "every seed, recomputes both systems' task scores and takes the mean over the drawn seeds of their "
                   f"difference; the {INTERVAL_LEVEL:.0%} interval is the 2.5th-97.5th percentile of the replicates, "
                   "per task and on the mean over tasks (MNLI-m/mm one task; extra evaluation splits not counted)")


def _interval_specs(config: dict) -> dict:
    """The task definitions of a results.json's config (what the paired bootstrap scores with)."""
    from mtkd.config import RunConfig, from_dict
    from mtkd.tasks import load_task_specs

    cfg = from_dict(RunConfig, {k: v for k, v in config.items()}, "results.json: config")
    return load_task_specs({n: o.override for n, o in cfg.tasks.items()}, cfg.tasks_file)


def _load_seed_predictions(seed_dirs: dict[int, Path], system: str) -> tuple[list[dict], list[str]]:
    """Each seed's {report: predictions} of `system` (seed-S/eval/<system>/predictions.npz), and the
    files that are missing."""
    runs, missing = [], []
    for _, folder in sorted(seed_dirs.items()):
        path = Path(folder) / "eval" / system / evaluate.PREDICTIONS_FILE
        if path.is_file():
            runs.append(evaluate.load_predictions(path))
        else:
            missing.append(str(path))
    return runs, missing


def paired_intervals(specs: dict, results: dict, seed_dirs: dict[int, Path]) -> dict:
    """{"intervals": ...} for every system of INTERVAL_SYSTEMS in `results` against MT-DNN, from each
    seed's per-example dev predictions (seed_dirs: seed -> its seed-S folder); {"intervals_note":
    ...} says which were not computed and why (results from before mtkd saved the predictions).
    The ensemble is compared on the teacher tasks (the tasks it has predictions for)."""
    systems = [s for s in INTERVAL_SYSTEMS if s in results.get("systems", {})]
    if BASELINE not in results.get("systems", {}) or not systems:
        return {}
    layout = _layout(results.get("report_layout"))
    task_layout = {t: lay["reports"] for t, lay in layout.items() if t in specs}
    base, missing = _load_seed_predictions(seed_dirs, BASELINE)
    notes = []
    comparisons = {}
    if missing:
        notes.append(f"no per-example dev predictions of MT-DNN ({', '.join(missing)}): written by mtkd runs "
                     "since the paired intervals were added; rerun the experiment (finished stages are reused)")
    for system in systems if not missing else []:
        runs, gone = _load_seed_predictions(seed_dirs, system)
        if gone:
            notes.append(f"{SYSTEM_NAMES[system]}: no per-example dev predictions ({', '.join(gone)})")
            continue
        try:
            a, b = _paired(base, runs)
            res = paired_bootstrap(specs, a, b, replicates=INTERVAL_REPLICATES, seed=INTERVAL_BOOTSTRAP_SEED,
                                   level=INTERVAL_LEVEL, layout=task_layout)
        except ValueError as e:
            notes.append(f"{SYSTEM_NAMES[system]}: {e}")
            continue
        res["tasks_above_zero"] = [t for t, r in res["tasks"].items() if r["low"] > 0]
        res["mean_above_zero"] = res["mean"]["low"] > 0
        comparisons[system] = res
    out: dict = {}
    if comparisons:
        out["intervals"] = {"baseline": BASELINE, "method": INTERVAL_METHOD, "replicates": INTERVAL_REPLICATES,
                            "level": INTERVAL_LEVEL, "bootstrap_seed": INTERVAL_BOOTSTRAP_SEED,
                            "seeds": sorted(int(s) for s in seed_dirs), "comparisons": comparisons}
    if notes:
        out["intervals_note"] = "; ".join(notes)
    return out


def _paired(base: list[dict], other: list[dict]) -> tuple[list[dict], list[dict]]:
    """{report: Evaluated} per seed for MT-DNN and another system, over the reports both have; the
    two must have predicted the same dev examples (ids) in the same order."""
    a, b = [], []
    for ra, rb in zip(base, other):
        common = [r for r in ra if r in rb]
        for r in common:
            if not np.array_equal(ra[r]["ids"], rb[r]["ids"]):
                raise ValueError(f"{r}: the two systems' predictions are for different dev examples")
        a.append({r: Evaluated(ra[r]["labels"], ra[r]["predictions"], ra[r].get("groups")) for r in common})
        b.append({r: Evaluated(rb[r]["labels"], rb[r]["predictions"], rb[r].get("groups")) for r in common})
    return a, b


TARGET_ENSEMBLE_GAIN = 1.5  # points: ensemble - MT-DNN on the teacher-task mean, in every seed
TARGET_TASKS_WON = 6 / 8  # share of the tasks where MT-DNN-KD beats MT-DNN
TARGET_GAIN_KEPT = 0.6  # share of the ensemble's gain (teacher-task mean) the student keeps


def targets(results: dict, teacher_tasks) -> list[dict]:
    """The issue's targets for the decisive KD experiment, each {"target", "system", "value", "met"}
    (met: True / False, None where it needs intervals that were not computed)."""
    layout = _layout(results.get("report_layout"))
    per_seed, comp = results.get("per_seed", {}), results.get("comparison", {})
    ivs = results.get("intervals", {}).get("comparisons", {})
    teachers = set(teacher_tasks)
    out = []
    if "ensemble" in per_seed and BASELINE in per_seed:
        gains = {}
        for seed, ens in per_seed["ensemble"].items():
            if seed in per_seed[BASELINE]:
                e, m = task_scores(ens, layout=layout), task_scores(per_seed[BASELINE][seed], layout=layout)
                common = [t for t in e if t in m and t in teachers]
                if common:
                    gains[seed] = round(float(np.mean([e[t] - m[t] for t in common])), 4)
        out.append({"target": f"ensemble − MT-DNN ≥ {TARGET_ENSEMBLE_GAIN} points on the teacher-task mean in every seed",
                    "system": "ensemble", "value": {"per_seed": gains},
                    "met": bool(gains) and all(v >= TARGET_ENSEMBLE_GAIN for v in gains.values())})
    ens = comp.get("ensemble_minus_mtdnn", {})
    for system, prefix in KD_SYSTEMS.items():
        beats = comp.get(f"{prefix}_beats_mtdnn")
        if not beats:
            continue
        need = math.ceil(TARGET_TASKS_WON * beats["of"] - 1e-9)
        mean_iv = ivs.get(system, {}).get("mean")
        counted = len(beats["tasks"]) >= need and (beats["mean_diff"] or 0) > 0
        out.append({"target": f"{SYSTEM_NAMES[system]} beats MT-DNN on ≥ {need} of {beats['of']} tasks and on the mean, "
                              "the mean's 95% interval above 0",
                    "system": system,
                    "value": {"tasks_better": len(beats["tasks"]), "of": beats["of"], "mean_diff": beats["mean_diff"],
                              "mean_interval": [mean_iv["low"], mean_iv["high"]] if mean_iv else None},
                    "met": (counted and mean_iv["low"] > 0) if mean_iv else (False if not counted else None)})
        kd = comp.get(f"{prefix}_minus_mtdnn", {})
        common = [t for t in ens if t in kd]
        if common:
            gain, kd_gain = float(np.mean([ens[t] for t in common])), float(np.mean([kd[t] for t in common]))
            kept = kd_gain / gain if gain > 0 else None
            out.append({"target": f"{SYSTEM_NAMES[system]} keeps ≥ {TARGET_GAIN_KEPT:.0%} of the ensemble's gain over "
                                  "MT-DNN on the teacher-task mean",
                        "system": system,
                        "value": {"student_gain": round(kd_gain, 4), "ensemble_gain": round(gain, 4),
                                  "kept": round(kept, 4) if kept is not None else None},
                        "met": kept is not None and kept >= TARGET_GAIN_KEPT})
    return out


def _interval_text(r: dict) -> str:
    return f"{r['diff']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]"


def _interval_lines(results: dict) -> list[str]:
    iv = results.get("intervals")
    lines = []
    if iv:
        comps = iv["comparisons"]
        systems = [s for s in INTERVAL_SYSTEMS if s in comps]
        tasks = list(dict.fromkeys(t for s in systems for t in comps[s]["tasks"]))
        lines += ["", f"Paired differences against MT-DNN, in points, with {iv['level']:.0%} intervals "
                      f"(seeds {iv['seeds']}):", "",
                  "| task | " + " | ".join(f"{SYSTEM_NAMES[s]} − MT-DNN" for s in systems) + " |",
                  "|---" * (len(systems) + 1) + "|"]
        for t in tasks:
            lines.append(f"| {t} | " + " | ".join(_interval_text(comps[s]["tasks"][t]) if t in comps[s]["tasks"] else "–"
                                                 for s in systems) + " |")
        lines.append("| mean | " + " | ".join(_interval_text(comps[s]["mean"]) + (" (teacher tasks)" if s == "ensemble" else "")
                                               for s in systems) + " |")
        lines.append("")
        for s in systems:
            c = comps[s]
            n = len(c["tasks"])
            over = f"{n} {'teacher ' if s == 'ensemble' else ''}task{'s' if n != 1 else ''}"
            lines.append(f"- {SYSTEM_NAMES[s]} − MT-DNN on the mean over {over}: {_interval_text(c['mean'])}: the interval "
                         + ("is above 0." if c["mean_above_zero"] else "is not above 0.")
                         + (f" Tasks whose interval is above 0: {', '.join(c['tasks_above_zero'])}." if c["tasks_above_zero"]
                            else " No task's interval is above 0."))
        lines.append(f"  Method: {iv['method']}.")
    if results.get("intervals_note"):
        lines += ["", f"Intervals not computed: {results['intervals_note']}."]
    return lines


def _target_lines(targets: list[dict]) -> list[str]:
    if not targets:
        return []
    lines = ["", "Targets of the decisive KD experiment:"]
    for t in targets:
        v = t["value"]
        if "per_seed" in v:
            got = ", ".join(f"seed {s} {g:+.2f}" for s, g in v["per_seed"].items()) or "no seed"
        elif "tasks_better" in v:
            got = (f"{v['tasks_better']} of {v['of']} tasks, mean {v['mean_diff']:+.2f}"
                   + (f" [{v['mean_interval'][0]:+.2f}, {v['mean_interval'][1]:+.2f}]" if v["mean_interval"] else
                      " (no interval)"))
        else:
            got = (f"{v['kept']:.0%} ({v['student_gain']:+.2f} of {v['ensemble_gain']:+.2f})" if v["kept"] is not None
                   else f"no gain to keep (ensemble {v['ensemble_gain']:+.2f})")
        mark = {True: "met", False: "not met", None: "not measured"}[t["met"]]
        lines.append(f"- {t['target']}: {got}: **{mark}**.")
    return lines


def plot_paired_differences(results: dict, path: Path) -> Path | None:
    """Per task and on the mean: each seed's difference to MT-DNN (dots) and the mean difference with
    its interval (error bar), one colour per system, a line at 0."""
    iv = results.get("intervals")
    if not iv:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comps = iv["comparisons"]
    systems = [s for s in INTERVAL_SYSTEMS if s in comps]
    cols = list(dict.fromkeys(t for s in systems for t in comps[s]["tasks"])) + ["mean"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.85 * len(cols) + 2), 3.8))
    width = 0.8 / len(systems)
    for k, s in enumerate(systems):
        off, color = -0.4 + width * (k + 0.5), CHART_COLORS.get(s, "#8172b3")
        label = SYSTEM_NAMES[s] + (" (mean: teacher tasks)" if s == "ensemble" else "")
        for x, t in enumerate(cols):
            r = comps[s]["mean"] if t == "mean" else comps[s]["tasks"].get(t)
            if r is None:
                continue
            ax.errorbar([x + off], [r["diff"]], yerr=[[r["diff"] - r["low"]], [r["high"] - r["diff"]]], fmt="s",
                        color=color, capsize=3, markersize=5, label=label)
            label = None
            ax.scatter([x + off] * len(r["per_seed"]), r["per_seed"], color=color, s=12, alpha=0.5, zorder=3)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(cols)))
    ax.set_xticklabels(cols, rotation=30, ha="right")
    ax.set_ylabel("difference to MT-DNN (dev points)")
    ax.set_title(f"Paired differences to MT-DNN: seeds (dots), mean with {iv['level']:.0%} interval", fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def plot_charts(results: dict, folder: Path) -> list[Path]:
    """One bar chart per task: each system's score (mean metric), with std error bars; with intervals,
    paired_differences.png (`plot_paired_differences`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    systems, std = results["systems"], results.get("std", {})
    tasks = {t for s in systems.values() for t in s}
    paths = []
    for t in sorted(tasks):
        names = [s for s in systems if t in systems[s]]
        vals = [_cell_value(systems[s][t]) for s in names]
        errs = [_cell_value(std[s][t]) if s in std and t in std[s] else 0.0 for s in names]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.bar([CHART_LABELS.get(s, s) for s in names], vals, yerr=errs, capsize=4,
               color=[CHART_COLORS.get(s, "#8172b3") for s in names])
        metrics = list(systems[names[0]][t])
        ax.set_ylabel(("mean of " if len(metrics) > 1 else "") + "/".join(metrics) + " (dev, x100)")
        ax.set_title(t)
        lo = min(vals) - 5
        ax.set_ylim(max(0, lo), max(v + e for v, e in zip(vals, errs)) + 3)
        for x, (v, e) in enumerate(zip(vals, errs)):  # above the error bar, so the two do not overlap
            ax.text(x, v + e + 0.3, f"{v:.1f}", ha="center", fontsize=8)
        fig.tight_layout()
        p = folder / f"{t}.png"
        fig.savefig(p, dpi=100)
        plt.close(fig)
        paths.append(p)
    paired = plot_paired_differences(results, folder / "paired_differences.png")
    return paths + ([paired] if paired else [])
