"""Recipe: MT-DNN-KD, the distilled student (paper Section 3), and the Table 3 experiment.

run(): MTL with Algorithm 1 where a task with soft targets is trained on
    (1 - w) * hard cross-entropy (Eq. 2) + w * soft cross-entropy (Eq. 4)   (w = kd.soft_weight = 0.5)
and every other task keeps its hard loss; then per-task fine-tuning (by default with the same KD
loss on teacher tasks, kd.finetune_with_soft). The student's encoder may differ from the teachers'
(kd.student, e.g. fewer layers): soft targets are per example, so nothing else changes.
Refuses soft targets written for other data (fingerprint) or missing training examples.

run_experiment(): the paper's Table 3 from one config: single-task fine-tuning (the BERT row),
vanilla MT-DNN (MTL + fine-tune), the teacher ensembles and MT-DNN-KD, for each seed. Writes
DIR/results.json, DIR/results.md and DIR/charts/<task>.png; each stage is cached (DONE.json).

combine(): the same outputs from several runs of one config that differ only in their seeds
(`mtkd combine A/results.json B/results.json --output-dir DIR`), e.g. a second seed run later.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import torch

from mtkd.config import Stage
from mtkd.errors import ConfigError
from mtkd.identity import changed
from mtkd.losses import kd_loss, task_loss
from mtkd.recipes import evaluate, finetune, mtl, predict, teach
from mtkd.recipes.context import RunContext
from mtkd.soft_targets import SoftTargets

log = logging.getLogger(__name__)

SYSTEMS = ("single_task", "mtdnn", "ensemble", "mtdnn_kd")
SYSTEM_NAMES = {"single_task": "Single-task fine-tuning", "mtdnn": "MT-DNN", "ensemble": "MT-DNN ensemble (teachers)",
                "mtdnn_kd": "MT-DNN-KD"}
CHART_COLORS = {"single_task": "#999999", "mtdnn": "#4c72b0", "ensemble": "#dd8452", "mtdnn_kd": "#55a868"}
CHART_LABELS = {"single_task": "single-task", "mtdnn": "MT-DNN", "ensemble": "ensemble\n(teachers)", "mtdnn_kd": "MT-DNN-KD"}


def kd_loss_factory(ctx: RunContext, soft_dir: Path):
    """loss_fn factory for mtkd.loop.train: the KD loss on teacher tasks, the hard loss elsewhere.
    Soft targets are aligned to each split's row order once, so a batch's `index` looks them up."""
    kd = ctx.cfg.kd
    tables = {}
    for task in list(kd.teacher_tasks) + list(ctx.unlabeled_tasks()):
        ts = ctx.train_set(task)
        tables[task] = torch.from_numpy(SoftTargets.load(soft_dir, task).aligned_to(ts.data, ts.indices))

    def factory(model):
        def loss_fn(task, logits, batch):
            kind = model.tasks[task].head
            if task in tables:
                soft = tables[task][batch["index"].cpu()].to(logits.device)
                return kd_loss(kind, logits, batch.get("labels"), soft, kd.soft_weight, kd.temperature)
            return task_loss(model.tasks[task], logits, batch)
        return loss_fn
    return factory


def soft_loss_identity(ctx: RunContext, soft_dir: Path) -> dict:
    """What the student's loss depends on: the teachers (their stage's key) and the KD settings."""
    kd = ctx.cfg.kd
    teachers = ctx.stage_key(soft_dir)
    if teachers is None:  # soft targets made by another run: their provenance names the teachers
        teachers = SoftTargets.load(soft_dir, kd.teacher_tasks[0]).provenance.get("teacher_key") if kd.teacher_tasks else None
    return {"teachers": teachers, "soft_weight": kd.soft_weight, "temperature": kd.temperature,
            "soft_tasks": list(kd.teacher_tasks) + list(ctx.unlabeled_tasks())}


def run(ctx: RunContext, out: Path, seed: int, soft_dir: Path) -> dict[str, Path]:
    """Train the student (MTL with soft targets, then fine-tune). Returns task -> model folder."""
    factory = None if ctx.planning else kd_loss_factory(ctx, soft_dir)
    loss_identity = soft_loss_identity(ctx, soft_dir)
    student = ctx.cfg.kd.student
    tasks = ctx.train_tasks() + list(ctx.unlabeled_tasks())  # unlabeled text: soft loss only (no labels)
    mtl.run(ctx, out / "mtl", seed, tasks=tasks, loss_fn_factory=factory, loss_identity=loss_identity,
            encoder_cfg=student, desc="student mtl")
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
        if Stage.DISTILL in stages:
            models = timed(f"seed-{seed}/distill", lambda: run(ctx, sd / "distill", seed, sd / "teach" / "soft_targets"))
            per_seed["mtdnn_kd"].append(_evaluate(ctx, models, sd / "eval" / "mtdnn_kd"))
        if Stage.PREDICT in stages and seed == cfg.seeds[0] and cfg.predict.submission and stages & {Stage.DISTILL, Stage.MTL}:
            # the leaderboard files of the model the experiment is about: the student, else MT-DNN
            served = dict(models) if Stage.DISTILL in stages else {t: sd / "finetune" / t / "model" for t in tasks}
            served.update({t: served[s.head_of] for t, s in ctx.specs.items() if s.head_of in served})
            timed(f"seed-{seed}/predict", lambda: predict.run(ctx, served, sd))
            if ctx.main and not ctx.planning:
                (out_dir / "submission.zip").write_bytes((sd / "submission.zip").read_bytes())
    if ctx.planning:
        return {}
    results = aggregate(per_seed, cfg.seeds)
    results["comparison"] = compare(results["systems"], cfg.kd.teacher_tasks)
    results["per_seed"] = {s: {str(seed): r for seed, r in zip(cfg.seeds, runs)} for s, runs in per_seed.items() if runs}
    if ctx.main:
        timings = json.loads((out_dir / "timings.json").read_text()) if (out_dir / "timings.json").is_file() else {}
        results.update(timings=timings, config=ctx.config_dict(),
                       notes={t: s.note for t, s in ctx.specs.items() if s.note})
        write_results(results, out_dir)
    return results


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
    results["comparison"] = compare(results["systems"], first["config"].get("kd", {}).get("teacher_tasks", []))
    results["per_seed"] = {s: {str(seed): per_seed[s][str(seed)] for seed in seeds} for s in ordered}
    timings = {}
    for _, res in loaded:
        timings.update({k: v for k, v in res.get("timings", {}).items() if k.startswith("seed-")})
    results.update(timings=timings, config={**first["config"], "seeds": seeds}, notes=first.get("notes", {}),
                   combined_from=[str(p) for p, _ in loaded])
    write_results(results, out_dir)
    return results


def _evaluate(ctx, models, out):
    return evaluate.run(ctx, models, out)  # every rank gets the same results


def aggregate(per_seed: dict[str, list[dict]], seeds: list[int]) -> dict:
    """{"systems": {system: {task: {metric: mean}}}, "std": same shape, "seeds": [...]} (x100)."""
    systems, std = {}, {}
    for name, runs in per_seed.items():
        if not runs:
            continue
        systems[name], std[name] = {}, {}
        for task in runs[0]:
            systems[name][task], std[name][task] = {}, {}
            for m in runs[0][task]:
                vals = [r[task][m] for r in runs]
                systems[name][task][m] = round(float(np.mean(vals)), 4)
                std[name][task][m] = round(float(np.std(vals)), 4)
    return {"systems": systems, "std": std, "seeds": list(seeds)}


def _cell_value(metrics: dict[str, float]) -> float:
    return float(np.mean(list(metrics.values())))


MIN_GAIN_FOR_SHARE = 0.5  # points (x100): below this the ensemble's gain is within dev-set rounding noise


def compare(systems: dict, teacher_tasks) -> dict:
    """The paper's Table 3 questions as numbers (x100 points, each task's mean metric):
    MT-DNN-KD vs MT-DNN per task (also on tasks without a teacher), the ensemble's gain over MT-DNN
    on the teacher tasks and the share of it the student keeps, MT-DNN vs single-task."""
    def diff(a: str, b: str, tasks=None) -> dict[str, float]:
        if a not in systems or b not in systems:
            return {}
        common = [t for t in systems[a] if t in systems[b] and (tasks is None or t in tasks)]
        return {t: round(_cell_value(systems[a][t]) - _cell_value(systems[b][t]), 4) for t in common}

    def wins(d: dict[str, float], tasks=None) -> dict:
        sel = {t: v for t, v in d.items() if tasks is None or t in tasks}
        return {"tasks": sorted(t for t, v in sel.items() if v > 0), "of": len(sel),
                "mean_diff": round(float(np.mean(list(sel.values()))), 4) if sel else None}

    teachers = set(teacher_tasks)
    out: dict = {}
    kd = diff("mtdnn_kd", "mtdnn")
    if kd:
        no_teacher = [t for t in kd if t not in teachers]
        w = wins(kd)
        w_free = wins(kd, no_teacher)
        out["kd_minus_mtdnn"] = kd
        out["kd_beats_mtdnn"] = {**w, "tasks_without_teacher": w_free["tasks"], "of_without_teacher": w_free["of"],
                                 "mean_diff_without_teacher": w_free["mean_diff"]}
    ens = diff("ensemble", "mtdnn", teachers)
    if ens:
        out["ensemble_minus_mtdnn"] = ens
        # share of the ensemble's gain the student keeps, per task where the ensemble gained enough
        # for a share to mean something (a 0.1-point gain would turn a 0.7-point difference into -700 %)
        out["ensemble_gain_kept"] = {t: round(kd[t] / g, 4) for t, g in ens.items() if g >= MIN_GAIN_FOR_SHARE and t in kd}
        out["ensemble_gain_too_small"] = sorted(t for t, g in ens.items() if 0 < g < MIN_GAIN_FOR_SHARE)
    st = diff("mtdnn", "single_task")
    if st:
        out["mtdnn_minus_single_task"] = st
        out["mtdnn_beats_single_task"] = wins(st)
    return out


def _comparison_lines(c: dict) -> list[str]:
    lines = ["", "The paper's Table 3 questions (differences in points, each task's mean metric):"]
    if "kd_beats_mtdnn" in c:
        k = c["kd_beats_mtdnn"]
        lines.append(f"- MT-DNN-KD better than MT-DNN on {len(k['tasks'])} of {k['of']} tasks "
                     f"(mean {k['mean_diff']:+.2f}); on tasks without a teacher {len(k['tasks_without_teacher'])} "
                     f"of {k['of_without_teacher']}" + (f" (mean {k['mean_diff_without_teacher']:+.2f})"
                                                         if k["mean_diff_without_teacher"] is not None else "") + ".")
        lines.append("  per task: " + ", ".join(f"{t} {v:+.1f}" for t, v in c["kd_minus_mtdnn"].items()))
    if "ensemble_minus_mtdnn" in c:
        lines.append("- Ensemble minus MT-DNN on the teacher tasks: "
                     + ", ".join(f"{t} {v:+.1f}" for t, v in c["ensemble_minus_mtdnn"].items())
                     + f"; share of that gain the student keeps (where the ensemble gained >= {MIN_GAIN_FOR_SHARE} points): "
                     + (", ".join(f"{t} {v:.0%}" for t, v in c["ensemble_gain_kept"].items()) or "none")
                     + (f" (gain under {MIN_GAIN_FOR_SHARE}, no share: {', '.join(c['ensemble_gain_too_small'])})"
                        if c.get("ensemble_gain_too_small") else "") + ".")
    if "mtdnn_beats_single_task" in c:
        m = c["mtdnn_beats_single_task"]
        lines.append(f"- MT-DNN better than single-task fine-tuning on {len(m['tasks'])} of {m['of']} tasks "
                     f"(mean {m['mean_diff']:+.2f}): " + ", ".join(f"{t} {v:+.1f}" for t, v in c["mtdnn_minus_single_task"].items()) + ".")
    return lines


def results_markdown(results: dict) -> str:
    """Rows = systems, columns = tasks + mean; the best single-model number per column in bold
    (the ensemble is not a single model). With several seeds cells read mean ± std."""
    systems, std = results["systems"], results.get("std", {})
    tasks = sorted({t for s in systems.values() for t in s}, key=lambda t: list(next(iter(systems.values()))).index(t)
                   if t in next(iter(systems.values())) else 99)
    single = [s for s in systems if s != "ensemble"]
    best = {t: max((_cell_value(systems[s][t]) for s in single if t in systems[s]), default=None) for t in tasks}
    means = {s: float(np.mean([_cell_value(v) for v in systems[s].values()])) for s in systems}
    best_mean = max((means[s] for s in single), default=None)
    multi = len(results.get("seeds", [])) > 1
    head = "| system | " + " | ".join(f"{t} ({'/'.join(next(systems[s][t] for s in systems if t in systems[s]))})" for t in tasks) + " | mean |"
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
    lines.append(f"Dev results x100, seeds {results.get('seeds')}; bold: best single model per column "
                 "(the ensemble row covers the teacher tasks only; its mean is over those). Mean = mean over tasks of each task's mean metric.")
    if results.get("comparison"):
        lines += _comparison_lines(results["comparison"])
    if results.get("notes"):
        lines += ["", "Data notes:"] + [f"- {t}: {n}" for t, n in results["notes"].items()]
    return "\n".join(lines) + "\n"


def plot_charts(results: dict, folder: Path) -> list[Path]:
    """One bar chart per task: each system's score (mean metric), with std error bars."""
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
    return paths
