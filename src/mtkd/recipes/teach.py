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
from mtkd.loop import predict_logits
from mtkd.metrics import compute_metrics, predictions_from_logits
from mtkd.recipes import finetune, mtl
from mtkd.recipes.context import RunContext
from mtkd.soft_targets import SoftTargets, ensemble_average, softmax
from mtkd.tasks import HeadKind


def candidates(ctx: RunContext, seed: int) -> list[dict]:
    """The configured candidates, or by default 4 differing by seed and dropout 0.1/0.2/0.3/0.1."""
    kd = ctx.cfg.kd
    if kd.candidates:
        return [{"seed": seed + 1000 * (i + 1), **c} for i, c in enumerate(kd.candidates)]
    return [{"seed": seed + 1000 * (i + 1), "dropout": d} for i, d in enumerate((0.1, 0.2, 0.3, 0.1))]


def _member_outputs(ctx, model, task, data, indices, temperature):
    logits = predict_logits(model, data, task, indices, ctx.cfg.predict.batch_size,
                            max_tokens=ctx.cfg.predict.max_tokens)
    if ctx.specs[task].head == HeadKind.CLASSIFICATION:
        return softmax(logits, temperature)
    return logits[:, 0]


def run(ctx: RunContext, out: Path, seed: int) -> dict:
    done = ctx.stage_done(out)
    if done is not None:
        return done
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
    scores = []
    for i, c in enumerate(cands):
        cdir = out / f"candidate-{i}"
        mtl.run(ctx, cdir / "mtl", c["seed"], dropout=c.get("dropout"), encoder=c.get("encoder"),
                desc=f"teacher candidate {i}")
        scores.append(_dev_score(ctx, cdir / "mtl" / "model", kd.select_by or kd.teacher_tasks, cdir))
    ranked = sorted(range(len(cands)), key=lambda i: -scores[i])
    members = ranked[: kd.top_k]
    # 3. fine-tune every member on every teacher task
    for i in members:
        cdir = out / f"candidate-{i}"
        finetune.run(ctx, cdir / "finetune", cands[i]["seed"], cdir / "mtl" / "model", tasks=list(kd.teacher_tasks),
                     desc=f"teacher {i}")
    # 4. soft targets for the student's training examples + the ensemble's dev results
    ensemble_dev: dict[str, dict[str, float]] = {}
    if ctx.main:
        for task in kd.teacher_tasks:
            spec, ts = ctx.specs[task], ctx.train_set(task)
            models = [ctx.load_model(out / f"candidate-{i}" / "finetune" / task / "model") for i in members]
            train_out = [_member_outputs(ctx, m, task, ts.data, ts.indices, kd.temperature) for m in models]
            provenance = {
                "members": [{"candidate": i, **cands[i], "model": str(out / f"candidate-{i}" / "finetune" / task / "model"),
                             "selection_dev_score": scores[i]} for i in members],
                "data_file": ts.data.meta["path"], "data_fingerprint": ts.data.fingerprint,
                "tokenizer_fingerprint": ts.data.meta["tokenizer_fingerprint"], "max_len": ts.data.meta["max_len"],
                "temperature": kd.temperature, "kind": spec.head.value, "labels": list(spec.labels),
            }
            SoftTargets(task, [ts.data.ids[i] for i in ts.indices], ensemble_average(train_out), provenance).save(out / "soft_targets")
            for pseudo in [p for p, base in ctx.unlabeled_tasks().items() if base == task]:
                us = ctx.train_set(pseudo)  # extra unlabeled text: labelled by the same ensemble
                outs = [_member_outputs(ctx, m, task, us.data, us.indices, kd.temperature) for m in models]
                SoftTargets(pseudo, [us.data.ids[i] for i in us.indices], ensemble_average(outs),
                            {**provenance, "data_file": us.data.meta["path"], "data_fingerprint": us.data.fingerprint}
                            ).save(out / "soft_targets")
            for name, (data, idx) in ctx.dev_sets(task).items():
                avg = ensemble_average([_member_outputs(ctx, m, task, data, idx, 1.0) for m in models])
                logits = np.log(np.clip(avg, 1e-12, None)) if spec.head == HeadKind.CLASSIFICATION else avg[:, None]
                ensemble_dev[name] = compute_metrics(spec, data.labels[idx], predictions_from_logits(spec, logits))
        (out / "ensemble_dev.json").write_text(json.dumps(ensemble_dev, indent=2))
    ctx.accelerator.wait_for_everyone()
    ensemble_dev = json.loads((out / "ensemble_dev.json").read_text())
    summary = {"candidates": cands, "selection_scores": scores, "members": members, "ensemble_dev": ensemble_dev,
               "soft_targets": str(out / "soft_targets")}
    ctx.mark_done(out, summary)
    return summary


def _dev_score(ctx: RunContext, model_dir: Path, tasks: list[str], cdir: Path) -> float:
    """Mean over `tasks` of the mean dev metric (computed on rank 0, shared through a file)."""
    path = cdir / "selection_score.json"
    if ctx.main and not path.is_file():
        model = ctx.load_model(model_dir)
        per_task = []
        for t in tasks:
            spec = ctx.specs[t]
            for _, (data, idx) in ctx.dev_sets(t).items():
                logits = predict_logits(model, data, t, idx, ctx.cfg.predict.batch_size,
                                        max_tokens=ctx.cfg.predict.max_tokens)
                per_task.append(np.mean(list(compute_metrics(spec, data.labels[idx], predictions_from_logits(spec, logits)).values())))
        path.write_text(json.dumps({"tasks": tasks, "score": float(np.mean(per_task))}))
    ctx.accelerator.wait_for_everyone()
    return json.loads(path.read_text())["score"]
