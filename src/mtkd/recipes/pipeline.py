"""Recipe: the experiment a config describes, stage by stage (`mtkd run CONFIG --output-dir DIR`).

Stages (config `stages`): single_task, mtl, finetune, evaluate, predict; teach and distill for
MT-DNN-KD, which make the run the Table 3 experiment (recipes/experiment.py). Each stage writes
DONE.json when it finishes, so a rerun of the same command skips finished stages and resumes the
unfinished one from its checkpoints.

Outputs: DIR/config.yaml (resolved config), DIR/data_report.json, DIR/seed-<s>/<stage>/...,
DIR/metrics.json + metrics.md (dev results of MT-DNN: MTL + fine-tune, and its labelled test splits
under "test"; mean over seeds), DIR/submission.zip (GLUE leaderboard files, first seed; a config
without a GLUE task gets DIR/predictions/ instead), DIR/timings.json (wall time per stage, StageTimings).
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from pathlib import Path
from typing import Callable

from mtkd.config import RunConfig, Stage, save_config
from mtkd.errors import CheckpointError
from mtkd.metrics import markdown_table
from mtkd.recipes import evaluate, experiment, finetune, mtl, predict
from mtkd.recipes.context import RunContext
from mtkd.recipes.inputs import data_report, prepare_data
from mtkd.report import aggregate

log = logging.getLogger(__name__)


def plan(ctx: RunContext) -> dict[str, str]:
    """Every stage's identity, without training: model folder -> stage key. What a run would refuse
    (a checkpoint of other settings or data) is collected in ctx.stages.problems."""
    ctx.stages.planning = True
    _stages(ctx, lambda name, fn: fn())
    ctx.stages.planning = False
    return ctx.stages.planned_keys()


def run(cfg: RunConfig, out_dir: Path) -> dict:
    ctx = RunContext(cfg, out_dir)
    out_dir = ctx.out_dir
    prepare_data(ctx)  # every file read and checked (and tokenised once) before anything trains
    plan(ctx)  # refuse checkpoints of other settings before anything (config.yaml included) is written
    ctx.accelerator.wait_for_everyone()  # no rank starts changing the folder while another still plans
    if ctx.stages.problems:
        raise CheckpointError("this run cannot resume as asked:\n  " + "\n  ".join(ctx.stages.problems))
    if ctx.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    timings = StageTimings(out_dir / "timings.json", write=ctx.main)

    def timed(name, fn):
        finished_before = ctx.stages.finished
        with timings.stage(name, worked=lambda: ctx.stages.finished > finished_before):
            return fn()

    if ctx.main:
        report = timed("data", lambda: data_report(ctx))
        (out_dir / "data_report.json").write_text(json.dumps(report, indent=2))
    return _stages(ctx, timed)


def _stages(ctx: RunContext, timed) -> dict:
    """The stages the config lists, for each seed (planned, or run)."""
    cfg, out_dir = ctx.cfg, ctx.out_dir
    stages = set(cfg.stages)
    if Stage.TEACH in stages or Stage.DISTILL in stages:
        return experiment.run_experiment(ctx, timed)

    per_seed = []
    for i, seed in enumerate(cfg.seeds):
        seed_dir = out_dir / f"seed-{seed}"
        models: dict[str, Path] = {}
        if Stage.MTL in stages:
            timed(f"seed-{seed}/mtl", lambda: mtl.run(ctx, seed_dir / "mtl", seed))
            models = {t: seed_dir / "mtl" / "model" for t in ctx.specs}
        if Stage.FINETUNE in stages:
            init = seed_dir / "mtl" / "model" if Stage.MTL in stages else None
            timed(f"seed-{seed}/finetune", lambda: finetune.run(ctx, seed_dir / "finetune", seed, init))
            models.update({t: seed_dir / "finetune" / t / "model" for t in (cfg.finetune_tasks or ctx.train_tasks())})
        if Stage.SINGLE_TASK in stages and not models:
            timed(f"seed-{seed}/single_task",
                  lambda: finetune.run(ctx, seed_dir / "single_task", seed, None, cfg=cfg.mtl, desc="single-task"))
            models = {t: seed_dir / "single_task" / t / "model" for t in ctx.train_tasks()}
        for t, spec in ctx.specs.items():  # AX is served by MNLI's (fine-tuned) model
            if spec.head_of and spec.head_of in models:
                models[t] = models[spec.head_of]
        if Stage.EVALUATE in stages:
            per_seed.append(timed(f"seed-{seed}/evaluate", lambda: evaluate.run(ctx, models, seed_dir, test=True)))
        if Stage.PREDICT in stages and i == 0 and cfg.predict.submission:
            timed(f"seed-{seed}/predict", lambda: predict.run(ctx, models, seed_dir))
            if ctx.main and not ctx.stages.planning:
                predict.copy_outputs(ctx, seed_dir, out_dir)
    results = {}
    if per_seed and ctx.main and not ctx.stages.planning:
        aggregated = aggregate({"mtdnn": per_seed}, cfg.seeds)  # the one seed-mean/std helper
        results, std = aggregated["systems"]["mtdnn"], aggregated["std"]["mtdnn"]
        (out_dir / "metrics.json").write_text(json.dumps(results, indent=2))
        if len(per_seed) > 1:
            (out_dir / "metrics_std.json").write_text(json.dumps(std, indent=2))
        notes = {t: s.note for t, s in ctx.specs.items() if s.note}
        (out_dir / "metrics.md").write_text(markdown_table(results, notes, ctx.specs))
        log.info("results:\n%s", markdown_table(results, notes, ctx.specs))
    return results


class StageTimings:
    """DIR/timings.json: wall seconds per stage, summed over the attempts that ran it. A stage stopped
    part-way (signal, error) adds its seconds under INTERRUPTED_KEY; the attempt that finishes it
    moves them into the stage's total, so a stage resumed across sessions reports its whole cost
    (a process killed outright, SIGKILL or out of memory, cannot record its attempt). A rerun that
    finds the stage done keeps the time of the run that did the work; one that trains it again
    (its settings changed) replaces it."""

    INTERRUPTED_KEY = "interrupted"

    def __init__(self, path: Path, write: bool = True):
        self.path, self.write = path, write
        self.times: dict = {}
        if write and path.is_file():  # only the writer reads: other ranks never see a half-written file
            try:
                self.times = json.loads(path.read_text())
            except ValueError as e:
                log.warning("%s: unreadable (%s); stage times start again", path, e)

    @contextlib.contextmanager
    def stage(self, name: str, worked: Callable[[], bool] = lambda: True):
        """Time a `with` block as stage `name`; `worked()`, asked at its end, says whether it trained
        or computed anything (False: every part was found done)."""
        t0 = time.time()
        finished = False
        try:
            yield
            finished = True
        finally:
            self._record(name, round(time.time() - t0, 1), finished, worked())

    def _record(self, name: str, seconds: float, finished: bool, worked: bool) -> None:
        interrupted = self.times.setdefault(self.INTERRUPTED_KEY, {})
        if not finished:
            interrupted[name] = round(interrupted.get(name, 0.0) + seconds, 1)
        elif worked or name not in self.times:
            self.times[name] = round(interrupted.pop(name, 0.0) + seconds, 1)
        if not interrupted:
            del self.times[self.INTERRUPTED_KEY]
        if self.write:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.times, indent=2))
            tmp.replace(self.path)
