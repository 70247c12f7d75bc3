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
   sub-stage of its own (DIR/unlabeled/soft_targets), so adding or resizing that text never
   retrains or relabels anything the paper's student reads.

Resumable: every training sub-stage has its own DONE.json and checkpoints.
The teacher and selection tasks, top_k and the candidates are checked before any stage runs (mtkd.config.validate).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mtkd.config import Candidate, TrainConfig, teacher_train_config, to_dict
from mtkd.errors import ConfigError
from mtkd.identity import digest
from mtkd.heads import kind_of
from mtkd.metrics import save_predictions, task_scores
from mtkd.recipes import finetune, mtl
from mtkd.recipes.context import RunContext
from mtkd.recipes.job import FreshEncoder, FromModel, train_stage
from mtkd.recipes.stages import train_settings
from mtkd.soft_targets import SoftTargets, ensemble_average

ENSEMBLE_PREDICTIONS = "ensemble_predictions.npz"  # the ensemble's dev predictions, per report name
UNLABELED_DIR = "unlabeled"  # the sub-stage that labels kd.unlabeled's text: DIR/unlabeled/soft_targets


def teacher_configs(ctx: RunContext) -> tuple[TrainConfig, TrainConfig]:
    """(the candidates' MTL settings, the members' fine-tuning settings): `mtl` and `finetune` with
    kd.teacher_mtl / kd.teacher_finetune applied on top."""
    return teacher_train_config(ctx.cfg, "mtl"), teacher_train_config(ctx.cfg, "finetune")


def _member_outputs(ctx, model, folder, task, split, indices, temperature):
    """One member's contribution to the soft targets on `indices` of a split (its head kind's
    `teacher_output`: class probabilities, regression predictions), tokenised with the member's own
    tokenizer (rows align across members: same file, same order)."""
    data = ctx.encoded(task, split, ctx.stages.model_tokenizer(folder))
    return kind_of(ctx.specs[task]).teacher_output(ctx.logits(model, data, task, indices), temperature)


def teacher_identity(ctx: RunContext, candidate_keys: list[dict]) -> dict:
    """What the ensembles and the teacher tasks' soft targets depend on: the candidates (each its MTL
    stage's identity, kd.teacher_mtl included), the members' fine-tuning (kd.teacher_finetune on
    top of `finetune`), selection and the teacher tasks' data (not kd.unlabeled's text: that is
    labelled by a sub-stage of its own, `unlabeled_identity`)."""
    kd = ctx.cfg.kd
    return {"candidates": candidate_keys, "finetune": train_settings(teacher_configs(ctx)[1], ctx.accelerator.device),
            "teacher_tasks": list(kd.teacher_tasks), "select_by": list(kd.select_by), "top_k": kd.top_k,
            "temperature": kd.temperature,
            "selection_data": {f"{t}/{s}": ctx.data_identity(t, s) for t in kd.select_by or kd.teacher_tasks
                               for s in ctx.specs[t].eval_splits("dev")},
            "dev_caps": {t: ctx.cap(t, "dev_cap") for t in dict.fromkeys(list(kd.select_by) + list(kd.teacher_tasks))},
            "labelled": {t: ctx.data_identity(t, "train") for t in kd.teacher_tasks}}


def unlabeled_identity(ctx: RunContext, teachers_key: str) -> dict:
    """What the soft targets of kd.unlabeled's text depend on: the teachers and the text."""
    return {"teachers": teachers_key, "texts": {p: ctx.data_identity(p, "train") for p in ctx.unlabeled_tasks()}}


def run(ctx: RunContext, out: Path, seed: int, mtdnn_mtl: Path | None = None) -> dict:
    """Candidates, selection, members, the teacher tasks' soft targets and the ensemble's dev results
    (one stage, DIR/DONE.json), then the soft targets of kd.unlabeled's text (DIR/unlabeled).
    `mtdnn_mtl`: this seed's MT-DNN MTL model, which the from_mtdnn candidates continue."""
    cands = ctx.cfg.kd.seeded_candidates(seed)
    # 1. train the candidates (the teachers' MTL budget: kd.teacher_mtl on top of mtl)
    teacher_mtl = teacher_configs(ctx)[0]
    keys = []
    for i, c in enumerate(cands):
        folder = out / f"candidate-{i}"
        train_stage(ctx, folder / "mtl", mtl.job(ctx, c.seed, cfg=teacher_mtl, start=_start(c, mtdnn_mtl),
                                                   desc=f"teacher candidate {i}"))
        keys.append(ctx.stages.model_identity(folder / "mtl" / "model"))
    identity = teacher_identity(ctx, keys)
    ctx.stages.register_model(out / "soft_targets", digest(identity), "")
    summary = ctx.stages.done(out, identity)
    if summary is not None:
        _ensure_ensemble_predictions(ctx, out, summary)
    else:
        summary = _ensembles(ctx, out, cands, identity)
    if ctx.unlabeled_tasks():
        summary = {**summary, "unlabeled": label_unlabeled(ctx, out, cands, summary, digest(identity))}
    return summary


def _start(candidate: Candidate, mtdnn_mtl: Path | None) -> FreshEncoder | FromModel:
    """Where a candidate's MTL starts: the encoder (its dropout / encoder overrides; the paper), or
    this seed's MT-DNN MTL model (from_mtdnn: the candidate is MT-DNN trained further)."""
    if candidate.from_mtdnn:
        if mtdnn_mtl is None:
            raise ConfigError("kd.candidates: a from_mtdnn candidate needs MT-DNN's MTL model (the mtl stage)")
        return FromModel(Path(mtdnn_mtl))
    return FreshEncoder(dropout=candidate.dropout, encoder=candidate.encoder)


def _ensembles(ctx: RunContext, out: Path, cands: list[Candidate], identity: dict) -> dict:
    """2-4: select, fine-tune the members, write the teacher tasks' soft targets, score the ensemble."""
    kd = ctx.cfg.kd
    teacher_ft = teacher_configs(ctx)[1]
    if ctx.stages.planning:  # which candidates become members is known only after training: check them all
        for i, c in enumerate(cands):
            finetune.run(ctx, out / f"candidate-{i}" / "finetune", c.seed, out / f"candidate-{i}" / "mtl" / "model",
                         cfg=teacher_ft, tasks=list(kd.teacher_tasks))
        ctx.stages.check_resumable(out, identity)
        return {"planned": str(out)}
    # 2. score each candidate on the selection tasks' dev sets, keep the top k
    scores = [_dev_score(ctx, out / f"candidate-{i}" / "mtl" / "model", kd.select_by or kd.teacher_tasks)
              for i in range(len(cands))]
    ranked = sorted(range(len(cands)), key=lambda i: -scores[i])
    members = ranked[: kd.top_k]
    # 3. fine-tune every member on every teacher task
    for i in members:
        folder = out / f"candidate-{i}"
        finetune.run(ctx, folder / "finetune", cands[i].seed, folder / "mtl" / "model", cfg=teacher_ft,
                     tasks=list(kd.teacher_tasks), desc=f"teacher {i}")
    # 4. soft targets for the student's training examples + the ensemble's dev results; every rank
    # computes its share of each member's predictions, rank 0 writes
    ensemble_dev: dict[str, dict[str, float]] = {}
    predicted: dict[str, dict] = {}
    for task in kd.teacher_tasks:
        train_set = ctx.train_set(task)
        folders = _member_folders(out, members, task)
        models = [ctx.load_model(f) for f in folders]
        avg = ensemble_average([_member_outputs(ctx, m, f, task, "train", train_set.indices, kd.temperature)
                                for m, f in zip(models, folders)])
        if ctx.main:
            SoftTargets(task, [train_set.data.ids[i] for i in train_set.indices], avg,
                        _provenance(ctx, cands, members, scores, folders, task, train_set, digest(identity))).save(out / "soft_targets")
        _score_ensemble(ctx, task, models, folders, ensemble_dev, predicted)  # the members already loaded
    if ctx.main:
        save_predictions(out / ENSEMBLE_PREDICTIONS, predicted)
        (out / "ensemble_dev.json").write_text(json.dumps(ensemble_dev, indent=2))
    summary = {"candidates": to_dict(cands), "selection_scores": scores, "members": members,
               "ensemble_dev": ensemble_dev, "soft_targets": str(out / "soft_targets")}
    ctx.stages.mark_done(out, summary, identity)
    return summary


def _member_folders(out: Path, members: list[int], task: str) -> list[Path]:
    return [out / f"candidate-{i}" / "finetune" / task / "model" for i in members]


def _provenance(ctx, cands, members, scores, folders, task, split_set, teacher_key, **extra) -> dict:
    spec = ctx.specs[task]
    return {"members": [{"candidate": i, **to_dict(cands[i]), "model": str(f),
                         "selection_dev_score": scores[i] if scores else None} for i, f in zip(members, folders)],
            "teacher_key": teacher_key, "data_file": split_set.data.meta["path"],
            "data_fingerprint": split_set.data.fingerprint,
            "tokenizer_fingerprint": split_set.data.meta["tokenizer_fingerprint"], "max_len": split_set.data.meta["max_len"],
            "temperature": ctx.cfg.kd.temperature, "kind": spec.head.value, "labels": list(spec.labels), **extra}


def _score_ensemble(ctx: RunContext, task: str, models: list, folders: list[Path], ensemble_dev: dict,
                    predicted: dict) -> None:
    """A task's ensemble on its dev splits (T = 1): metrics into `ensemble_dev` and per-example
    predictions into `predicted` (saved as DIR/ensemble_predictions.npz, the format every evaluation
    of the experiment writes), by report name."""
    spec, dev = ctx.specs[task], ctx.dev_sets(task)
    for split in spec.eval_splits("dev"):
        name = spec.report_name(split)
        data, idx = dev[name]
        avg = ensemble_average([_member_outputs(ctx, m, f, task, split, idx, 1.0) for m, f in zip(models, folders)])
        kind = kind_of(spec)
        pred = kind.predictions(kind.ensemble_logits(avg))
        ensemble_dev[name] = kind.scores(data.labels[idx], pred)
        predicted[name] = {"ids": [data.ids[i] for i in idx], "labels": data.labels[idx], "predictions": pred}


def _ensure_ensemble_predictions(ctx: RunContext, out: Path, summary: dict) -> None:
    """A teach stage finished before mtkd kept the ensemble's per-example dev predictions: make them
    from its members (inference only; nothing retrains). Every rank checks before any writes."""
    if ctx.stages.planning or "members" not in summary:
        return
    missing = not (out / ENSEMBLE_PREDICTIONS).is_file()
    ctx.accelerator.wait_for_everyone()
    if missing and all(f.is_dir() for t in ctx.cfg.kd.teacher_tasks for f in _member_folders(out, summary["members"], t)):
        predicted: dict[str, dict] = {}
        for task in ctx.cfg.kd.teacher_tasks:
            folders = _member_folders(out, summary["members"], task)
            _score_ensemble(ctx, task, [ctx.load_model(f) for f in folders], folders, {}, predicted)
        if ctx.main:
            save_predictions(out / ENSEMBLE_PREDICTIONS, predicted)


def label_unlabeled(ctx: RunContext, out: Path, cands: list[Candidate], summary: dict, teachers_key: str) -> dict:
    """5. The ensembles' soft targets for kd.unlabeled's text (each pseudo-task labelled by its
    task's members), in DIR/unlabeled/soft_targets; a sub-stage of its own (DIR/unlabeled/DONE.json)
    keyed by the teachers and the text."""
    kd, folder = ctx.cfg.kd, out / UNLABELED_DIR
    identity = unlabeled_identity(ctx, teachers_key)
    ctx.stages.register_model(folder / "soft_targets", digest(identity), "")
    done = ctx.stages.done(folder, identity)
    if done is not None:
        return done
    if ctx.stages.planning:
        return {"planned": str(folder)}
    members, scores = summary["members"], summary.get("selection_scores")
    examples = {}
    pseudo = ctx.unlabeled_tasks()
    for task in dict.fromkeys(pseudo.values()):
        folders = _member_folders(out, members, task)
        models = [ctx.load_model(f) for f in folders]
        for name in [p for p, base in pseudo.items() if base == task]:
            split_set = ctx.train_set(name)
            avg = ensemble_average([_member_outputs(ctx, m, f, name, "train", split_set.indices, kd.temperature)
                                    for m, f in zip(models, folders)])
            examples[name] = len(split_set.indices)
            if ctx.main:
                SoftTargets(name, [split_set.data.ids[i] for i in split_set.indices], avg,
                            _provenance(ctx, cands, members, scores, folders, name, split_set, teachers_key,
                                        unlabeled_key=digest(identity))).save(folder / "soft_targets")
    info = {"soft_targets": str(folder / "soft_targets"), "examples": examples, "members": members}
    ctx.stages.mark_done(folder, info, identity)
    return info


def _dev_score(ctx: RunContext, model_dir: Path, tasks: list[str]) -> float:
    """Mean over `tasks` of each task's dev score (MNLI-m and -mm averaged into one MNLI score
    first, as on the leaderboard); every rank computes its share and gets the score."""
    model = ctx.load_model(model_dir)
    results = {}
    for t in tasks:
        for name, (data, idx) in ctx.dev_sets(t, ctx.stages.model_tokenizer(model_dir)).items():
            groups = data.groups[idx] if data.groups is not None else None
            results[name] = kind_of(ctx.specs[t]).score(ctx.logits(model, data, t, idx), data.labels[idx], groups)
    return float(np.mean(list(task_scores(results, {t: ctx.specs[t] for t in tasks}).values())))
