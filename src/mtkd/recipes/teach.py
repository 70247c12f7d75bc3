"""Recipe: teacher ensembles and their soft targets (paper Section 3).

1. Train each candidate MT-DNN with Algorithm 1; candidates differ by seed, shared-layer dropout
   and optionally the initial encoder (kd.candidates; paper: 6 with dropout 0.1/0.2/0.3), under
   `mtl` with kd.teacher_mtl's keys on top (the teachers' own budget, e.g. more epochs). Beyond
   the paper, a from_mtdnn candidate starts from this seed's MT-DNN MTL model instead of the
   encoder: MT-DNN trained further, with its own seed (a stronger teacher for half the steps).
2. Rank them by the mean dev score on kd.select_by (paper: MNLI + RTE) and keep the top kd.top_k.
3. Fine-tune every kept member on every teacher task (kd.teacher_tasks; paper: MNLI, QQP, RTE, QNLI),
   under `finetune` with kd.teacher_finetune's keys on top.
4. Per teacher task, average the members' class probabilities (Eq. 3; regression: the mean
   prediction) on every training example the student will see, and write them once to
   DIR/soft_targets with provenance; also score the ensemble on the dev sets (the "ensemble" row),
   keeping its per-example dev predictions in DIR/ensemble_predictions.npz (metrics.save_predictions).
5. Beyond the paper, with kd.unlabeled: the same ensembles label the extra unlabeled text, in a
   sub-stage of its own (DIR/unlabeled/soft_targets, mtkd.unlabeled), so adding or resizing that
   text never retrains or relabels anything the paper's student reads.

Resumable: every training sub-stage has its own DONE.json and checkpoints. Which candidates become
members is known only once they are trained, so planning checks every candidate's fine-tuning.
The teacher and selection tasks, top_k and the candidates are checked before any stage runs (mtkd.config.validate).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np

from mtkd import unlabeled
from mtkd.config import Candidate, RunConfig, teacher_train_config, to_dict
from mtkd.errors import ConfigError
from mtkd.heads import kind_of
from mtkd.metrics import PREDICTIONS_FILE, save_predictions, task_scores
from mtkd.model import load_model
from mtkd.recipes import finetune, mtl
from mtkd.recipes.runner import FreshEncoder, FromModel, Job, Runner, TrainingJob, train_settings
from mtkd.soft_targets import SoftTargets, ensemble_average
from mtkd.stages import digest
from mtkd.task_data import TaskData

ENSEMBLE_PREDICTIONS = "ensemble_predictions.npz"  # the ensemble's dev predictions, per report name


def jobs(cfg: RunConfig, data: TaskData, out: Path, seed: int, mtdnn_mtl: Path | None = None) -> list[Job]:
    """Steps 1-5 in `out`: the candidates' MTL (one stage each), the ensembles and the teacher tasks'
    soft targets (one stage, OUT/DONE.json) and, with kd.unlabeled, the labelling of its text
    (OUT/unlabeled). `mtdnn_mtl`: this seed's MT-DNN MTL model, which the from_mtdnn candidates continue."""
    cands = cfg.kd.seeded_candidates(seed)
    teacher_mtl, teacher_ft = teacher_train_config(cfg, "mtl"), teacher_train_config(cfg, "finetune")
    candidates = [mtl.job(cfg, data, out / f"candidate-{i}" / "mtl", c.seed, train=teacher_mtl,
                          start=_start(cfg, c, mtdnn_mtl), desc=f"teacher candidate {i}") for i, c in enumerate(cands)]
    members = [finetune.jobs(cfg, data, out / f"candidate-{i}" / "finetune", c.seed, out / f"candidate-{i}" / "mtl" /
                             "model", train=teacher_ft, tasks=list(cfg.kd.teacher_tasks), desc=f"teacher {i}")
               for i, c in enumerate(cands)]
    ensembles = Ensembles(cfg, data, out, cands, members)
    text = [LabelText(data, out / unlabeled.LABELS_FOLDER, ensembles)] if unlabeled.pseudo_tasks(cfg) else []
    return candidates + [ensembles] + text


def _start(cfg: RunConfig, candidate: Candidate, mtdnn_mtl: Path | None) -> FreshEncoder | FromModel:
    """Where a candidate's MTL starts: the encoder (its dropout / encoder overrides; the paper), or
    this seed's MT-DNN MTL model (from_mtdnn: the candidate is MT-DNN trained further)."""
    if candidate.from_mtdnn:
        if mtdnn_mtl is None:
            raise ConfigError("kd.candidates: a from_mtdnn candidate needs MT-DNN's MTL model (the mtl stage)")
        return FromModel(Path(mtdnn_mtl))
    return FreshEncoder(cfg.encoder, dropout=candidate.dropout, encoder=candidate.encoder)


@dataclass(eq=False)
class Ensembles(Job):
    """Steps 2-4, one stage (OUT/DONE.json, its key in the soft targets' provenance): select the
    candidates, fine-tune the members (`members[i]`: candidate i's fine-tuning), write the teacher
    tasks' soft targets and score each teacher task's ensemble."""
    cfg: RunConfig
    data: TaskData
    out: Path
    cands: list[Candidate]
    members: list[list[TrainingJob]]
    summary: dict = field(default_factory=dict)  # what DONE.json holds, once selected (or reused)
    _loaded: tuple = field(default=(None, ()), repr=False)  # (task, its members' models): one task at a time

    def identity(self, runner: Runner) -> dict:
        """The candidates (each its MTL stage's identity, kd.teacher_mtl included), the members'
        fine-tuning (kd.teacher_finetune on top of `finetune`), selection and the teacher tasks' data
        (not kd.unlabeled's text: a sub-stage of its own labels it)."""
        kd, data = self.cfg.kd, self.data
        return {"candidates": [runner.stages.model_identity(self.out / f"candidate-{i}" / "mtl" / "model")
                               for i in range(len(self.cands))],
                "finetune": train_settings(teacher_train_config(self.cfg, "finetune"), runner.device),
                "teacher_tasks": list(kd.teacher_tasks), "select_by": list(kd.select_by), "top_k": kd.top_k,
                "temperature": kd.temperature,
                "selection_data": {f"{t}/{s}": data.data_identity(t, s) for t in kd.select_by or kd.teacher_tasks
                                   for s in data.specs[t].eval_splits("dev")},
                "dev_caps": {t: data.cap(t, "dev_cap")
                             for t in dict.fromkeys(list(kd.select_by) + list(kd.teacher_tasks))},
                "labelled": {t: data.data_identity(t, "train") for t in kd.teacher_tasks}}

    def registers(self, runner: Runner) -> tuple[Path, str]:
        return self.out / "soft_targets", ""

    def plan(self, runner: Runner) -> None:
        runner.plan([job for jobs in self.members for job in jobs])  # any candidate may become a member

    def reuse(self, runner: Runner, summary: dict) -> dict:
        self.summary = summary
        return summary

    def run(self, runner: Runner, identity: dict) -> dict:
        kd, out = self.cfg.kd, self.out
        # 2. score each candidate on the selection tasks' dev sets, keep the top k
        scores = [_dev_score(runner, self.data, out / f"candidate-{i}" / "mtl" / "model",
                             kd.select_by or kd.teacher_tasks) for i in range(len(self.cands))]
        members = sorted(range(len(self.cands)), key=lambda i: -scores[i])[: kd.top_k]
        self.summary = {"candidates": to_dict(self.cands), "selection_scores": scores, "members": members}
        # 3. fine-tune every member on every teacher task
        for i in members:
            runner.run(self.members[i])
        # 4. soft targets for the student's training examples + the ensemble's dev results; every rank
        # computes its share of each member's predictions, rank 0 writes
        ensemble_dev: dict[str, dict[str, float]] = {}
        predicted: dict[str, dict] = {}
        for task in kd.teacher_tasks:
            targets = self.soft_targets(runner, task, task, self.data.train_set(task))
            if runner.main:
                targets.save(out / "soft_targets")
            self.score(runner, task, ensemble_dev, predicted)  # the members already loaded
        if runner.main:
            save_predictions(out / ENSEMBLE_PREDICTIONS, predicted)
            (out / "ensemble_dev.json").write_text(json.dumps(ensemble_dev, indent=2))
        self.summary.update(ensemble_dev=ensemble_dev, soft_targets=str(out / "soft_targets"))
        self.unload()
        runner.stages.mark_done(out, self.summary, identity)
        return self.summary

    def unload(self) -> None:
        """Free the members' models (before the students train)."""
        self._loaded = (None, ())

    def folders(self, task: str) -> list[Path]:
        """The selected members' models fine-tuned on `task`."""
        return [self.out / f"candidate-{i}" / "finetune" / task / "model" for i in self.summary["members"]]

    def average(self, runner: Runner, task: str, name: str, split: str, indices, temperature: float) -> np.ndarray:
        """Eq. 3: the mean over `task`'s members of their head kind's `teacher_output` (class
        probabilities, regression predictions) on rows `indices` of a split of `name` (the task, or
        its unlabeled text); each member reads the rows with its own tokenizer (same file, same order)."""
        if self._loaded[0] != task:
            self._loaded = (task, [load_model(f, self.data.specs, runner.device) for f in self.folders(task)])
        kind = kind_of(self.data.specs[name])
        return ensemble_average([
            kind.teacher_output(runner.logits(m, self.data.encoded(name, split, runner.stages.model_tokenizer(f)),
                                              name, indices), temperature)
            for m, f in zip(self._loaded[1], self.folders(task))])

    def soft_targets(self, runner: Runner, task: str, name: str, rows, **provenance) -> SoftTargets:
        """`task`'s ensemble on the training rows `rows` of `name` (the task, or its unlabeled text)."""
        kd, spec, scores = self.cfg.kd, self.data.specs[name], self.summary.get("selection_scores")
        return SoftTargets(name, [rows.data.ids[i] for i in rows.indices],
                           self.average(runner, task, name, "train", rows.indices, kd.temperature), {
            "members": [{"candidate": i, **to_dict(self.cands[i]), "model": str(f),
                         "selection_dev_score": scores[i] if scores else None}
                        for i, f in zip(self.summary["members"], self.folders(task))],
            "teacher_key": runner.stages.stage_key(self.out / "soft_targets"), "data_file": rows.data.meta["path"],
            "data_fingerprint": rows.data.fingerprint, "tokenizer_fingerprint": rows.data.meta["tokenizer_fingerprint"],
            "max_len": rows.data.meta["max_len"], "temperature": kd.temperature, "kind": spec.head.value,
            "labels": list(spec.labels), **provenance})

    def score(self, runner: Runner, task: str, ensemble_dev: dict, predicted: dict) -> None:
        """`task`'s ensemble on its dev splits (T = 1): metrics into `ensemble_dev` and per-example
        predictions into `predicted` (saved as OUT/ensemble_predictions.npz, the format every
        evaluation of the experiment writes), by report name."""
        spec, dev = self.data.specs[task], self.data.dev_sets(task)
        kind = kind_of(spec)
        for split in spec.eval_splits("dev"):
            name = spec.report_name(split)
            data, idx = dev[name]
            pred = kind.predictions(kind.ensemble_logits(self.average(runner, task, task, split, idx, 1.0)))
            ensemble_dev[name] = kind.scores(data.labels[idx], pred)
            predicted[name] = {"ids": [data.ids[i] for i in idx], "labels": data.labels[idx], "predictions": pred}


@dataclass(eq=False)
class LabelText(Job):
    """Step 5, a sub-stage of its own (OUT/DONE.json, OUT/soft_targets): kd.unlabeled's text labelled
    by the ensembles (mtkd.unlabeled.label), keyed by the teachers and the text."""
    data: TaskData
    out: Path
    ensembles: Ensembles

    def identity(self, runner: Runner) -> dict:
        return unlabeled.labelling_identity(self.data, runner.stages.stage_key(self.ensembles.out / "soft_targets"))

    def registers(self, runner: Runner) -> tuple[Path, str]:
        return self.out / "soft_targets", ""

    def run(self, runner: Runner, identity: dict) -> dict:
        info = {**unlabeled.label(self.data, partial(self.ensembles.soft_targets, runner), self.out, digest(identity),
                                  runner.main), "members": self.ensembles.summary["members"]}
        self.ensembles.unload()
        runner.stages.mark_done(self.out, info, identity)
        return info


def ensemble_results(ensembles: Ensembles, runner: Runner, out: Path) -> dict:
    """The "ensemble" row of Table 3: the teach stage's dev results, its per-example dev predictions
    copied to `out`/predictions.npz, where the paired intervals look for every system's."""
    src = ensembles.out / ENSEMBLE_PREDICTIONS
    if runner.main and src.is_file():
        out.mkdir(parents=True, exist_ok=True)
        (out / PREDICTIONS_FILE).write_bytes(src.read_bytes())
    return ensembles.summary["ensemble_dev"]


def _dev_score(runner: Runner, data: TaskData, model_dir: Path, tasks: list[str]) -> float:
    """Mean over `tasks` of each task's dev score (MNLI-m and -mm averaged into one MNLI score
    first, as on the leaderboard); every rank computes its share and gets the score."""
    model = load_model(model_dir, data.specs, runner.device)
    results = {}
    for t in tasks:
        for name, (split, idx) in data.dev_sets(t, runner.stages.model_tokenizer(model_dir)).items():
            groups = split.groups[idx] if split.groups is not None else None
            results[name] = kind_of(data.specs[t]).score(runner.logits(model, split, t, idx), split.labels[idx], groups)
    return float(np.mean(list(task_scores(results, {t: data.specs[t] for t in tasks}).values())))
