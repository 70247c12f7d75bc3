"""Recipe: the experiment a config describes, stage by stage (`mtkd run CONFIG --output-dir DIR`).

Stages (config `stages`): single_task, mtl, finetune, evaluate, predict; teach and distill for
MT-DNN-KD, which make the run the Table 3 experiment (its report: recipes/experiment.py). One
sequence serves both (seed_steps). The whole run is planned first (recipes.runner), so a checkpoint
of other settings is refused before anything is written; a rerun of the same command skips
finished stages (DONE.json) and resumes the unfinished one from its checkpoints.

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
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable

from mtkd import unlabeled
from mtkd.config import RunConfig, Stage, save_config
from mtkd.errors import CheckpointError
from mtkd.metrics import markdown_table
from mtkd.recipes import distill, evaluate, experiment, finetune, mtl, predict, teach
from mtkd.recipes.inputs import data_report, prepare_data
from mtkd.recipes.runner import Runner
from mtkd.report import aggregate
from mtkd.task_data import TaskData

log = logging.getLogger(__name__)


@dataclass
class Step:
    name: str | None  # its entry in timings.json (None: not timed)
    jobs: list  # recipes.runner.Job, or functions of the runner (evaluation, predictions)
    system: str | None = None  # a system's evaluation: its one job's result is that system's row


def plan(cfg: RunConfig, out_dir: Path) -> tuple[TaskData, Runner, list[Step]]:
    """The run's steps with every stage's identity computed; nothing is trained or written. Every
    file is checked and tokenised first (prepare_data). What running the steps would refuse (a
    checkpoint of other settings or data) is in runner.stages.problems."""
    data, runner = TaskData(cfg), Runner(cfg, out_dir)
    prepare_data(cfg, data, runner.accelerator)
    steps = [step for seed in cfg.seeds for step in seed_steps(cfg, data, runner.out_dir, seed)]
    runner.plan([job for step in steps for job in step.jobs])
    return data, runner, steps


def run(cfg: RunConfig, out_dir: Path) -> dict:
    data, runner, steps = plan(cfg, out_dir)  # before anything (config.yaml included) is written
    runner.accelerator.wait_for_everyone()  # no rank starts changing the folder while another still plans
    if runner.stages.problems:
        raise CheckpointError("this run cannot resume as asked:\n  " + "\n  ".join(runner.stages.problems))
    out_dir = runner.out_dir
    if runner.main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, out_dir / "config.yaml")
    timings = StageTimings(out_dir / "timings.json", write=runner.main)

    def timed(name: str | None):
        if name is None:
            return contextlib.nullcontext()
        finished_before = runner.stages.finished
        return timings.stage(name, worked=lambda: runner.stages.finished > finished_before)

    if runner.main:
        with timed("data"):
            report = data_report(data)
        (out_dir / "data_report.json").write_text(json.dumps(report, indent=2))
    evaluated: dict[str, list[dict]] = {}  # system -> each seed's results
    for step in steps:
        with timed(step.name):
            outputs = runner.run(step.jobs)
        if step.system:
            evaluated.setdefault(step.system, []).extend(outputs)
    if _table3(cfg):
        return experiment.results(cfg, data, evaluated, out_dir, runner.main)
    return _metrics(cfg, data, [r for runs in evaluated.values() for r in runs], out_dir, runner.main)


def _table3(cfg: RunConfig) -> bool:
    return bool({Stage.TEACH, Stage.DISTILL} & set(cfg.stages))


def seed_steps(cfg: RunConfig, data: TaskData, out_dir: Path, seed: int) -> list[Step]:
    """One seed's steps in order: each system the config trains, then its evaluation. The Table 3
    experiment (teach or distill listed) trains every system listed and evaluates each in
    seed-S/eval/<system>; an MT-DNN config trains MT-DNN (or, without mtl and finetune, the
    single-task baseline) and evaluates it in seed-S. The first seed's test predictions are those of
    the last system trained."""
    stages, table3, seed_dir = set(cfg.stages), _table3(cfg), out_dir / f"seed-{seed}"
    tasks = cfg.finetune_tasks or data.train_tasks()
    steps: list[Step] = []
    served: dict[str, Path] = {}

    def train(stage: str, jobs: list) -> None:
        steps.append(Step(f"seed-{seed}/{stage}", jobs))

    def evaluation(system: str, models: dict[str, Path]) -> None:
        if not table3:  # a shared head's task (AX) is served by its task's model
            models = {**models, **{t: models[s.head_of] for t, s in data.specs.items() if s.head_of in models}}
        if table3 or Stage.EVALUATE in stages:
            out = seed_dir / "eval" / system if table3 else seed_dir
            steps.append(Step(None if table3 else f"seed-{seed}/evaluate",
                              [partial(evaluate.evaluate, data, models=models, out=out, test=True)], system))

    if Stage.SINGLE_TASK in stages and (table3 or not stages & {Stage.MTL, Stage.FINETUNE}):
        train("single_task", finetune.jobs(cfg, data, seed_dir / "single_task", seed, None, train=cfg.mtl,
                                           tasks=tasks, desc="single-task"))
        served = _folders(seed_dir / "single_task", tasks)
        evaluation("single_task", served)
    mtl_model = seed_dir / "mtl" / "model"
    if Stage.MTL in stages:
        train("mtl", [mtl.job(cfg, data, seed_dir / "mtl", seed)])
    finetuned = Stage.MTL in stages if table3 else Stage.FINETUNE in stages  # Table 3's MT-DNN: MTL + fine-tuning
    if finetuned:
        train("finetune", finetune.jobs(cfg, data, seed_dir / "finetune", seed,
                                        mtl_model if Stage.MTL in stages else None, tasks=tasks))
    if Stage.MTL in stages or finetuned:
        served = {t: mtl_model for t in data.specs} if Stage.MTL in stages and not table3 else {}
        served.update(_folders(seed_dir / "finetune", tasks) if finetuned else {})
        evaluation("mtdnn", served)
    if table3:
        teaching = teach.jobs(cfg, data, seed_dir / "teach", seed, mtdnn_mtl=mtl_model)
        train("teach", teaching)
        ensembles = next(job for job in teaching if isinstance(job, teach.Ensembles))
        steps.append(Step(None, [partial(teach.ensemble_results, ensembles, out=seed_dir / "eval" / "ensemble")],
                          "ensemble"))
    if Stage.DISTILL in stages:
        # the paper's MT-DNN-KD (the teacher tasks' soft targets only) and, with kd.unlabeled, the
        # extra row "MT-DNN-KD + unlabeled text" from the same teachers, beside it
        students = [("mtdnn_kd", "distill", None)]
        if unlabeled.pseudo_tasks(cfg):
            students.append((unlabeled.STUDENT, unlabeled.STUDENT_FOLDER,
                             seed_dir / "teach" / unlabeled.LABELS_FOLDER / "soft_targets"))
        for system, folder, text in students:
            train(folder, distill.jobs(cfg, data, seed_dir / folder, seed, seed_dir / "teach" / "soft_targets", text))
            evaluation(system, _folders(seed_dir / folder / "finetune", tasks))
        served = _folders(seed_dir / "distill" / "finetune", tasks)
    if Stage.PREDICT in stages and seed == cfg.seeds[0] and cfg.predict.submission and \
            (not table3 or stages & {Stage.DISTILL, Stage.MTL}):
        steps.append(Step(f"seed-{seed}/predict", [partial(predict.predict, data, models=served, out=seed_dir,
                                                           copy_to=out_dir)]))
    return steps


def _folders(out: Path, tasks: list[str]) -> dict[str, Path]:
    """task -> its model folder of a per-task stage (fine-tuning) in `out`."""
    return {t: out / t / "model" for t in tasks}


def _metrics(cfg: RunConfig, data: TaskData, runs: list[dict], out_dir: Path, main: bool) -> dict:
    """DIR/metrics.json + metrics.md: the mean over seeds of each seed's dev and labelled test
    results (DIR/metrics_std.json: their std, with several seeds). Rank 0 writes and returns them."""
    if not runs or not main:
        return {}
    aggregated = aggregate({"mtdnn": runs}, cfg.seeds)  # the one seed-mean/std helper
    results, std = aggregated["systems"]["mtdnn"], aggregated["std"]["mtdnn"]
    (out_dir / "metrics.json").write_text(json.dumps(results, indent=2))
    if len(runs) > 1:
        (out_dir / "metrics_std.json").write_text(json.dumps(std, indent=2))
    notes = {t: s.note for t, s in data.specs.items() if s.note}
    (out_dir / "metrics.md").write_text(markdown_table(results, notes, data.specs))
    log.info("results:\n%s", markdown_table(results, notes, data.specs))
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
