"""Recipe: multi-task learning, Algorithm 1 of the paper.

Trains one MT-DNN on every task that has training data: single-task mini-batches of all tasks,
merged and shuffled each epoch, one update per batch on that batch's task loss. With `loss_fn`
(the distill recipe) the loss of teacher tasks also reads the soft targets.

Writes DIR/model (save_pretrained folder), DIR/metrics.jsonl, DIR/checkpoints, DIR/DONE.json.
A finished stage is reused when its identity (settings, starting model, data) is unchanged and
trained again otherwise; a checkpoint is resumed only under the identity it was written with.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mtkd.config import TrainConfig
from mtkd.loop import LossFn, train
from mtkd.identity import digest
from mtkd.model_card import training_record
from mtkd.recipes.context import RunContext, train_settings


def run(ctx: RunContext, out: Path, seed: int, tasks: list[str] | None = None, cfg: TrainConfig | None = None,
        init_from: Path | None = None, dropout: float | None = None, encoder: str | None = None,
        loss_fn_factory=None, loss_identity: dict | None = None, desc: str = "mtl", encoder_cfg=None) -> dict:
    """Train (or resume) and save to out/model. Returns the stage summary (also in out/DONE.json).

    The model starts from `init_from` (a model folder) or a fresh encoder (`encoder_cfg`, with the
    `dropout` / `encoder` overrides of a teacher candidate); `loss_fn_factory(model)` replaces the
    hard loss (`loss_identity` says what it depends on, e.g. the soft targets and their weight)."""
    cfg = cfg or ctx.cfg.mtl
    tasks = tasks or ctx.train_tasks()
    ctx.check_inside(out / "checkpoints")  # before any work: the cleanup at the end must not fail
    # the training data is tokenised by the tokenizer of the model being trained
    tokenizer = ctx.model_tokenizer(init_from) if init_from else str(encoder or (encoder_cfg or ctx.cfg.encoder).name)
    identity = {"seed": seed, "tasks": {t: ctx.data_identity(t, "train", tokenizer) for t in tasks},
                "train": train_settings(cfg, ctx.accelerator.device),
                "init": ctx.model_identity(init_from) if init_from else ctx.encoder_identity(encoder_cfg, dropout, encoder),
                "loss": loss_identity}
    ctx.register_model(out / "model", digest(identity), tokenizer)
    done = ctx.stage_done(out, identity)
    if done is not None:
        return done
    if ctx.planning:
        ctx.check_resumable(out, identity)
        return {"planned": str(out)}
    train_sets = {t: ctx.train_set(t, tokenizer) for t in tasks}
    torch.manual_seed(seed)  # the fresh heads' initialisation depends on the seed only
    if init_from:
        model = ctx.load_model(init_from, new_heads=True)  # a task new to the model gets a fresh head
    else:
        model = ctx.new_model(dropout=dropout, encoder=encoder, encoder_cfg=encoder_cfg)
    loss_fn: LossFn | None = loss_fn_factory(model) if loss_fn_factory else None
    out.mkdir(parents=True, exist_ok=True)
    summary = train(model, train_sets, cfg, seed, out, ctx.accelerator, loss_fn=loss_fn,
                    run_config=ctx.config_dict(), desc=desc, identity=identity)
    if ctx.main:  # with the model card's training record (settings, data, start, distillation)
        card = training_record(ctx, desc=desc, seed=seed, tasks=tasks, cfg=cfg, train_sets=train_sets, summary=summary,
                               init_from=init_from, dropout=dropout, encoder=encoder, encoder_cfg=encoder_cfg,
                               loss_identity=loss_identity)
        model.save_pretrained(out / "model", card=card)
    summary.update(tasks=tasks, seed=seed, train_examples={t: len(s.indices) for t, s in train_sets.items()})
    ctx.mark_done(out, summary, identity)
    if ctx.main:  # the finished model is in out/model; the resume state is no longer needed
        ctx.remove_inside(out / "checkpoints")
    return summary
