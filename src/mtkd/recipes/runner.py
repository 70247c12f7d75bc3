"""The one runner: it plans every job of a run before anything is written, then runs them.

Recipes describe their stages as jobs; a training job (MTL, fine-tuning, the teacher candidates
and members, the students) says what to train, from which model and with which loss. Planning
computes each job's identity (mtkd.stages), which names the stages it starts from, and collects
what running it would refuse; running reuses a job finished under the same identity, resumes it
from its checkpoints, else does it. A training stage writes OUT/model (with its card),
OUT/metrics.jsonl, OUT/checkpoints (removed when done) and OUT/DONE.json. Evaluation and
predictions are functions of the runner: they run every time.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from mtkd.config import EncoderConfig, RunConfig, TrainConfig, to_dict
from mtkd.loop import LossFn, autocast, make_accelerator, predict_logits, train
from mtkd.model import MTModel, load_model, new_model
from mtkd.model_card import training_record
from mtkd.stages import Stages, digest
from mtkd.task_data import TaskData

# TrainConfig fields that do not change what a stage computes (resume and reuse ignore them)
NOT_SHAPING = ("checkpoint_every", "keep_checkpoints", "log_every", "check_every")


def train_settings(cfg: TrainConfig, device=None) -> dict:
    """The settings that shape a training run; `precision` as applied on `device` (fp32 on a CPU)."""
    out = {k: v for k, v in to_dict(cfg).items() if k not in NOT_SHAPING}
    if device is not None:
        out["precision"] = autocast(cfg.precision, device)[1]
    return out


class Job:
    """A stage of the run in `out`. Each job has `identity(runner)`, `registers(runner)` (the folder
    later stages name, its model or soft targets, and that folder's tokenizer) and
    `run(runner, identity)`; `plan` checks what running it would refuse beyond its own checkpoint,
    `reuse` takes a finished one's summary."""

    out: Path

    def plan(self, runner: Runner) -> None:
        pass

    def reuse(self, runner: Runner, summary: dict) -> Any:
        return summary


class Runner:
    """Runs jobs on this process (its device, and its share of every inference under several
    processes) in one run folder, whose stages it keeps (`stages`). Identities are computed once:
    those planned are kept for the run."""

    def __init__(self, cfg: RunConfig, out_dir: Path):
        self.cfg = cfg
        self.out_dir = Path(out_dir)
        self.accelerator = make_accelerator()
        self.main, self.device = self.accelerator.is_main_process, self.accelerator.device
        self.stages = Stages(self.out_dir, self.accelerator)
        self._identities: dict[int, tuple[Job, dict]] = {}

    def identity(self, job: Job) -> dict:
        """A job's identity, computed once; the folder it registers is known by its key from then on."""
        if id(job) not in self._identities:
            identity = job.identity(self)
            folder, tokenizer = job.registers(self)
            self.stages.register_model(folder, digest(identity), tokenizer)
            self._identities[id(job)] = (job, identity)
        return self._identities[id(job)][1]

    def plan(self, jobs: list) -> None:
        """Every job's identity, in order (each names those it starts from), and what running the
        ones not done would refuse, into stages.problems. Trains and writes nothing."""
        for job in [j for j in jobs if isinstance(j, Job)]:
            identity = self.identity(job)
            if self.stages.done(job.out, identity) is None:
                job.plan(self)
                self.stages.check_resumable(job.out, identity)

    def run(self, jobs: list) -> list:
        """Each one's result: a function's (of the runner), a finished job's summary (reused), or
        what running the job returns."""
        results = []
        for job in jobs:
            if not isinstance(job, Job):
                results.append(job(self))
                continue
            identity = self.identity(job)
            done = self.stages.done(job.out, identity)
            results.append(job.reuse(self, done) if done is not None else job.run(self, identity))
        return results

    def logits(self, model: MTModel, data, task: str, indices=None):
        """(N, C) logits of examples `indices` of an encoded split, every rank predicting its share
        with the config's `predict` batches and `mtl.precision` (mtkd.loop.predict_logits)."""
        return predict_logits(model, data, task, indices, self.cfg.predict.batch_size, self.cfg.predict.max_tokens,
                              self.accelerator, self.cfg.mtl.precision)


# -------------------------------------------------------------------------------- training jobs
@dataclass(frozen=True)
class FreshEncoder:
    """Start from a pretrained encoder with fresh heads: an encoder section of the config (`encoder`,
    or a student's); `dropout` and `encoder` override its shared-layer dropout and weights (a
    teacher candidate)."""
    encoder_cfg: EncoderConfig
    dropout: float | None = None
    encoder: str | None = None

    def tokenizer(self, stages: Stages) -> str:
        return str(self.encoder or self.encoder_cfg.name)

    def identity(self, stages: Stages) -> dict:
        """The encoder (its weights' checksum), depth, dropout and init."""
        name, e = self.tokenizer(stages), self.encoder_cfg
        return {"encoder": name, "weights": stages.encoder_weights(name), "num_hidden_layers": e.num_hidden_layers,
                "dropout": e.dropout if self.dropout is None else self.dropout, "init": e.init}

    def build(self, specs: dict, device) -> MTModel:
        return new_model(self.encoder_cfg, specs, device, dropout=self.dropout, encoder=self.encoder)


@dataclass(frozen=True)
class FromModel:
    """Start from a saved model folder (an MTL model to fine-tune); a task it has no head for gets a
    fresh one (fine-tuning on a new task)."""
    folder: Path

    def tokenizer(self, stages: Stages) -> str:
        return stages.model_tokenizer(self.folder)

    def identity(self, stages: Stages) -> dict:
        return stages.model_identity(self.folder)

    def build(self, specs: dict, device) -> MTModel:
        return load_model(self.folder, specs, device, new_heads=True)


@dataclass(frozen=True)
class Loss:
    """A loss in place of each task's own: `factory(model)` gives the loop's loss_fn, `record` is
    what it depends on (part of the stage's identity)."""
    factory: Callable[[MTModel], LossFn]
    record: dict | None = None

    def identity(self, stages: Stages) -> dict | None:
        return self.record


@dataclass(frozen=True)
class TrainingJob(Job):
    data: TaskData
    out: Path
    desc: str  # the progress bar's and the model card's name of the stage
    seed: int
    tasks: list[str]
    train: TrainConfig
    start: FreshEncoder | FromModel
    loss: Any = None  # a Loss (or distill.KDLoss); None: each task's own loss (CE, MSE, ranking)

    def identity(self, runner: Runner) -> dict:
        tokenizer = self.start.tokenizer(runner.stages)  # the data is read by the tokenizer of the model trained
        return {"seed": self.seed, "tasks": {t: self.data.data_identity(t, "train", tokenizer) for t in self.tasks},
                "train": train_settings(self.train, runner.device), "init": self.start.identity(runner.stages),
                "loss": self.loss.identity(runner.stages) if self.loss else None}

    def registers(self, runner: Runner) -> tuple[Path, str]:
        runner.stages.check_inside(self.out / "checkpoints")  # before any work: the cleanup at the end must not fail
        return self.out / "model", self.start.tokenizer(runner.stages)

    def run(self, runner: Runner, identity: dict) -> dict:
        """Train (resuming from OUT/checkpoints) and save. Returns the stage summary (also in OUT/DONE.json)."""
        tokenizer = self.start.tokenizer(runner.stages)
        train_sets = {t: self.data.train_set(t, tokenizer) for t in self.tasks}
        torch.manual_seed(self.seed)  # the fresh heads' initialisation depends on the seed only
        model = self.start.build(self.data.specs, runner.device)
        loss_fn = self.loss.factory(model) if self.loss else None
        self.out.mkdir(parents=True, exist_ok=True)
        summary = train(model, train_sets, self.train, self.seed, self.out, runner.accelerator, loss_fn=loss_fn,
                        run_config=to_dict(self.data.cfg), desc=self.desc, identity=identity)
        if runner.main:  # the model card's training record: settings, data, the start, distillation
            model.save_pretrained(self.out / "model", card=training_record(
                self.data.cfg, self.data.specs, identity, desc=self.desc, train_sets=train_sets, summary=summary,
                init_from=getattr(self.start, "folder", None)))
        summary.update(tasks=self.tasks, seed=self.seed,
                       train_examples={t: len(s.indices) for t, s in train_sets.items()})
        runner.stages.mark_done(self.out, summary, identity)
        if runner.main:  # the finished model is in OUT/model; the resume state is no longer needed
            runner.stages.remove_inside(self.out / "checkpoints")
        return summary
