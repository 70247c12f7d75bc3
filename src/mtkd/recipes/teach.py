"""Recipe: teacher ensembles and their soft targets (paper Section 3).

1. Train each candidate MT-DNN with Algorithm 1; candidates differ by seed, shared-layer dropout
   and optionally the initial encoder (kd.candidates; paper: 6 with dropout 0.1/0.2/0.3).
2. Rank them by the mean dev score on kd.select_by (paper: MNLI + RTE) and keep the top kd.top_k.
3. Fine-tune every kept member on every teacher task (kd.teacher_tasks; paper: MNLI, QQP, RTE, QNLI).
4. Per teacher task, average the members' class probabilities (Eq. 3; regression: the mean
   prediction) on every training example the student will see, and write them once to
   DIR/soft_targets with provenance; also score the ensemble on the dev sets (the "ensemble" row).

Resumable: every training sub-stage has its own DONE.json and checkpoints.
Refuses: teacher or selection tasks that are not in the task list; top_k larger than the candidates.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mtkd.errors import ConfigError
from mtkd.identity import digest
from mtkd.metrics import score_split, task_scores
from mtkd.recipes import finetune, mtl
from mtkd.recipes.context import RunContext, train_settings
from mtkd.soft_targets import SoftTargets, ensemble_average, softmax
from mtkd.tasks import HeadKind


def candidates(ctx: RunContext, seed: int) -> list[dict]:
    """The configured candidates, or by default 4 differing by seed and dropout 0.1/0.2/0.3/0.1."""
    kd = ctx.cfg.kd
    if kd.candidates:
        return [{"seed": seed + 1000 * (i + 1), **c} for i, c in enumerate(kd.candidates)]
    return [{"seed": seed + 1000 * (i + 1), "dropout": d} for i, d in enumerate((0.1, 0.2, 0.3, 0.1))]


def _member_outputs(ctx, model, folder, task, split, indices, temperature):
    """One member's class probabilities (regression: predictions) on `indices` of a split, tokenised
    with the member's own tokenizer (rows align across members: same file, same order)."""
    data = ctx.encoded(task, split, ctx.model_tokenizer(folder))
    logits = ctx.logits(model, data, task, indices)
    if ctx.specs[task].head == HeadKind.CLASSIFICATION:
        return softmax(logits, temperature)
    return logits[:, 0]


def teacher_identity(ctx: RunContext, candidate_keys: list[dict]) -> dict:
    """What the ensembles and soft targets depend on: the candidates (each its MTL stage's
    identity), the members' fine-tuning, selection and the data labelled."""
    kd = ctx.cfg.kd
    return {"candidates": candidate_keys, "finetune": train_settings(ctx.cfg.finetune, ctx.accelerator.device),
            "teacher_tasks": list(kd.teacher_tasks), "select_by": list(kd.select_by), "top_k": kd.top_k,
            "temperature": kd.temperature,
            "selection_data": {f"{t}/{s}": ctx.data_identity(t, s) for t in kd.select_by or kd.teacher_tasks
                               for s in ctx.specs[t].eval_splits("dev")},
            "dev_caps": {t: ctx._cap(t, "dev_cap") for t in dict.fromkeys(list(kd.select_by) + list(kd.teacher_tasks))},
            "labelled": {t: ctx.data_identity(t, "train") for t in list(kd.teacher_tasks) + list(ctx.unlabeled_tasks())}}


def run(ctx: RunContext, out: Path, seed: int) -> dict:
    kd = ctx.cfg.kd
    for t in list(kd.teacher_tasks) + list(kd.select_by):
        if t not in ctx.specs:
            raise ConfigError(f"kd: task {t!r} is not in the config's task list {list(ctx.specs)}")
        if t in kd.teacher_tasks and ctx.specs[t].head == HeadKind.RANKING:
            raise ConfigError(f"kd: task {t!r} is a ranking task; teachers for ranking tasks are not supported yet")
    cands = candidates(ctx, seed)
    if not 1 <= kd.top_k <= len(cands):
        raise ConfigError(f"kd.top_k={kd.top_k} but there are {len(cands)} candidates")
    # 1-2. train the candidates, score each on the selection tasks' dev sets
    keys, scores = [], []
    for i, c in enumerate(cands):
        folder = out / f"candidate-{i}"
        mtl.run(ctx, folder / "mtl", c["seed"], dropout=c.get("dropout"), encoder=c.get("encoder"),
                desc=f"teacher candidate {i}")
        keys.append(ctx.model_identity(folder / "mtl" / "model"))
    identity = teacher_identity(ctx, keys)
    ctx.register_model(out / "soft_targets", digest(identity), "")
    done = ctx.stage_done(out, identity)
    if done is not None:
        return done
    if ctx.planning:  # which candidates become members is known only after training: check them all
        for i, c in enumerate(cands):
            finetune.run(ctx, out / f"candidate-{i}" / "finetune", c["seed"], out / f"candidate-{i}" / "mtl" / "model",
                         tasks=list(kd.teacher_tasks))
        ctx.check_resumable(out, identity)
        return {"planned": str(out)}
    for i in range(len(cands)):
        scores.append(_dev_score(ctx, out / f"candidate-{i}" / "mtl" / "model", kd.select_by or kd.teacher_tasks))
    ranked = sorted(range(len(cands)), key=lambda i: -scores[i])
    members = ranked[: kd.top_k]
    # 3. fine-tune every member on every teacher task
    for i in members:
        folder = out / f"candidate-{i}"
        finetune.run(ctx, folder / "finetune", cands[i]["seed"], folder / "mtl" / "model", tasks=list(kd.teacher_tasks),
                     desc=f"teacher {i}")
    # 4. soft targets for the student's training examples + the ensemble's dev results; every rank
    # computes its share of each member's predictions, rank 0 writes
    ensemble_dev: dict[str, dict[str, float]] = {}
    for task in kd.teacher_tasks:
        spec, ts = ctx.specs[task], ctx.train_set(task)
        folders = [out / f"candidate-{i}" / "finetune" / task / "model" for i in members]
        models = [ctx.load_model(f) for f in folders]
        provenance = {
            "members": [{"candidate": i, **cands[i], "model": str(f), "selection_dev_score": scores[i]}
                        for i, f in zip(members, folders)],
            "teacher_key": digest(identity), "data_file": ts.data.meta["path"], "data_fingerprint": ts.data.fingerprint,
            "tokenizer_fingerprint": ts.data.meta["tokenizer_fingerprint"], "max_len": ts.data.meta["max_len"],
            "temperature": kd.temperature, "kind": spec.head.value, "labels": list(spec.labels),
        }
        for name in [task] + [p for p, base in ctx.unlabeled_tasks().items() if base == task]:
            # extra unlabeled text (pseudo-task name+unlabeled) is labelled by the same ensemble
            split_set = ctx.train_set(name)
            avg = ensemble_average([_member_outputs(ctx, m, f, name, "train", split_set.indices, kd.temperature)
                                    for m, f in zip(models, folders)])
            if ctx.main:
                SoftTargets(name, [split_set.data.ids[i] for i in split_set.indices], avg,
                            {**provenance, "data_file": split_set.data.meta["path"],
                             "data_fingerprint": split_set.data.fingerprint}).save(out / "soft_targets")
        for split in spec.eval_splits("dev"):
            data, idx = ctx.dev_sets(task)[spec.report_name(split)]
            avg = ensemble_average([_member_outputs(ctx, m, f, task, split, idx, 1.0) for m, f in zip(models, folders)])
            logits = np.log(np.clip(avg, 1e-12, None)) if spec.head == HeadKind.CLASSIFICATION else avg[:, None]
            ensemble_dev[spec.report_name(split)] = score_split(spec, logits, data.labels[idx])
    if ctx.main:
        (out / "ensemble_dev.json").write_text(json.dumps(ensemble_dev, indent=2))
    summary = {"candidates": cands, "selection_scores": scores, "members": members, "ensemble_dev": ensemble_dev,
               "soft_targets": str(out / "soft_targets")}
    ctx.mark_done(out, summary, identity)
    return summary


def _dev_score(ctx: RunContext, model_dir: Path, tasks: list[str]) -> float:
    """Mean over `tasks` of each task's dev score (MNLI-m and -mm averaged into one MNLI score
    first, as on the leaderboard); every rank computes its share and gets the score."""
    model = ctx.load_model(model_dir)
    results = {}
    for t in tasks:
        for name, (data, idx) in ctx.dev_sets(t, ctx.model_tokenizer(model_dir)).items():
            groups = data.groups[idx] if data.groups is not None else None
            results[name] = score_split(ctx.specs[t], ctx.logits(model, data, t, idx), data.labels[idx], groups)
    return float(np.mean(list(task_scores(results, {t: ctx.specs[t] for t in tasks}).values())))
