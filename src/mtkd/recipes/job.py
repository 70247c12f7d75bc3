"""A training job: what one training stage trains, from which model, with which loss.

Every training step of the paper is described as jobs: MTL (Algorithm 1 on every task, from the
encoder), fine-tuning (one task, from the MTL model), the teacher candidates (MTL with another seed,
dropout or encoder) and the student (MTL with the KD loss). `train_stage` runs one job: it reuses a
finished stage whose identity is unchanged, resumes from checkpoints, else trains with mtkd.loop,
then saves the model folder with its card.

Writes OUT/model (save_pretrained folder), OUT/metrics.jsonl, OUT/checkpoints (removed when done)
and OUT/DONE.json.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from mtkd.config import EncoderConfig, TrainConfig
from mtkd.identity import digest
from mtkd.loop import LossFn, train
from mtkd.model_card import training_record
from mtkd.recipes.context import RunContext
from mtkd.recipes.stages import train_settings


@dataclass(frozen=True)
class FreshEncoder:
    """Start from a pretrained encoder with fresh heads: the config's encoder, or `encoder_cfg` (a
    student's); `dropout` and `encoder` override its shared-layer dropout and weights (a teacher
    candidate)."""
    encoder_cfg: EncoderConfig | None = None
    dropout: float | None = None
    encoder: str | None = None

    def tokenizer(self, ctx: RunContext) -> str:
        return str(self.encoder or (self.encoder_cfg or ctx.cfg.encoder).name)

    def identity(self, ctx: RunContext) -> dict:
        return ctx.stages.encoder_identity(self.encoder_cfg or ctx.cfg.encoder, self.dropout, self.encoder)

    def build(self, ctx: RunContext):
        return ctx.new_model(dropout=self.dropout, encoder=self.encoder, encoder_cfg=self.encoder_cfg)


@dataclass(frozen=True)
class FromModel:
    """Start from a saved model folder (an MTL model to fine-tune); a task it has no head for gets a
    fresh one (fine-tuning on a new task)."""
    folder: Path

    def tokenizer(self, ctx: RunContext) -> str:
        return ctx.stages.model_tokenizer(self.folder)

    def identity(self, ctx: RunContext) -> dict:
        return ctx.stages.model_identity(self.folder)

    def build(self, ctx: RunContext):
        return ctx.load_model(self.folder, new_heads=True)


@dataclass(frozen=True)
class Loss:
    """A loss in place of each task's own: `factory(model)` gives the loss_fn (None while planning:
    nothing is trained); `identity` is what it depends on (e.g. the soft targets and their weight)."""
    factory: Callable[[object], LossFn] | None
    identity: dict | None


@dataclass(frozen=True)
class TrainingJob:
    desc: str  # the progress bar's and the model card's name of the stage
    seed: int
    tasks: list[str]
    cfg: TrainConfig
    start: FreshEncoder | FromModel
    loss: Loss | None = None  # None: each task's own loss (CE, MSE, ranking)


def train_stage(ctx: RunContext, out: Path, job: TrainingJob) -> dict:
    """Train (or reuse, or resume) `job` in `out`. Returns the stage summary (also in out/DONE.json)."""
    stages = ctx.stages
    stages.check_inside(out / "checkpoints")  # before any work: the cleanup at the end must not fail
    tokenizer = job.start.tokenizer(ctx)  # the data is tokenised by the tokenizer of the model trained
    identity = {"seed": job.seed, "tasks": {t: ctx.data_identity(t, "train", tokenizer) for t in job.tasks},
                "train": train_settings(job.cfg, ctx.accelerator.device), "init": job.start.identity(ctx),
                "loss": job.loss.identity if job.loss else None}
    stages.register_model(out / "model", digest(identity), tokenizer)
    done = stages.done(out, identity)
    if done is not None:
        return done
    if stages.planning:
        stages.check_resumable(out, identity)
        return {"planned": str(out)}
    train_sets = {t: ctx.train_set(t, tokenizer) for t in job.tasks}
    torch.manual_seed(job.seed)  # the fresh heads' initialisation depends on the seed only
    model = job.start.build(ctx)
    loss_fn = job.loss.factory(model) if job.loss and job.loss.factory else None
    out.mkdir(parents=True, exist_ok=True)
    summary = train(model, train_sets, job.cfg, job.seed, out, ctx.accelerator, loss_fn=loss_fn,
                    run_config=ctx.config_dict(), desc=job.desc, identity=identity)
    if ctx.main:
        model.save_pretrained(out / "model", card=_card(ctx, job, train_sets, summary))
    summary.update(tasks=job.tasks, seed=job.seed, train_examples={t: len(s.indices) for t, s in train_sets.items()})
    stages.mark_done(out, summary, identity)
    if ctx.main:  # the finished model is in out/model; the resume state is no longer needed
        stages.remove_inside(out / "checkpoints")
    return summary


def _card(ctx: RunContext, job: TrainingJob, train_sets: dict, summary: dict) -> dict | None:
    """The model card's training record: settings, data, the model started from, distillation."""
    start = job.start
    fresh = start if isinstance(start, FreshEncoder) else FreshEncoder()
    return training_record(ctx, desc=job.desc, seed=job.seed, tasks=job.tasks, cfg=job.cfg, train_sets=train_sets,
                           summary=summary, init_from=getattr(start, "folder", None), dropout=fresh.dropout,
                           encoder=fresh.encoder, encoder_cfg=fresh.encoder_cfg,
                           loss_identity=job.loss.identity if job.loss else None)
