"""The one training loop (every recipe calls it) and evaluation.

Reads top to bottom in execution order: build sampler and optimizer, resume if a checkpoint is
there, then for each batch: learning rate, forward on that task's head, loss, backward, clip,
step, log, checkpoint. Distributed via Accelerate (`torchrun` / `accelerate launch`): every rank
takes its shard of the same single-task batch; only rank 0 logs and saves.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NoReturn

import numpy as np
import torch
from tqdm.auto import tqdm

from mtkd.checkpoint import load_latest_checkpoint, save_checkpoint
from mtkd.config import Optimizer, Precision, TrainConfig
from mtkd.data import EncodedSplit, TrainSet, collate
from mtkd.errors import CheckpointError, TrainingDiverged
from mtkd.files import atomic_write
from mtkd.inference import batched_logits
from mtkd.losses import task_loss
from mtkd.sampler import MultiTaskBatchSampler
from mtkd.stages import checkpoint_problem

log = logging.getLogger(__name__)

# loss_fn(task, logits, batch) -> per-example losses (B,)
LossFn = Callable[[str, torch.Tensor, dict], torch.Tensor]


class TrainingInterrupted(SystemExit):
    """SIGINT/SIGTERM: the current step finished and a checkpoint was written."""


def mixed_precision_mode(precision: Precision, cuda: bool, bf16_supported: bool) -> str:
    """Accelerate's mixed_precision: fp32 ("no") on CPU whatever the config says (bf16 is emulated on
    AVX2 CPUs and far slower); on CUDA, AUTO means bf16 where supported, else fp16 (with a scaler)."""
    if not cuda or precision == Precision.FP32:
        return "no"
    if precision == Precision.AUTO:
        return "bf16" if bf16_supported else "fp16"
    return precision.value


def autocast(precision: Precision, device: torch.device):
    """The autocast context of a precision on a device (a no-op on CPU: fp32 there) and its mode."""
    cuda = device.type == "cuda"
    mode = mixed_precision_mode(precision, cuda, cuda and torch.cuda.is_bf16_supported())
    dtype = torch.bfloat16 if mode == "bf16" else torch.float16
    return torch.autocast(device.type, dtype=dtype, enabled=mode != "no"), mode


def make_accelerator(precision: Precision | None = None):
    """Process group, device and DDP wrapping. Mixed precision is not Accelerate's here: each
    stage's own `precision` (mtl, finetune) is applied in `train` (autocast + a grad scaler)."""
    from accelerate import Accelerator, DistributedDataParallelKwargs

    # Accelerate treats a `torchrun` launch without a GPU as N unrelated single processes (each
    # training alone and writing the same files) unless told to use the CPU: say so explicitly.
    cpu = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    # each step uses one task's head only, so DDP must expect unused parameters
    return Accelerator(mixed_precision="no", cpu=cpu,
                       kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warm-up over the first `warmup` fraction of steps, then linear decay to 0."""
    warm = int(cfg.warmup * total)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    return cfg.lr * max(0.0, (total - step) / max(1, total - warm))


def default_loss(model) -> LossFn:
    def fn(task, logits, batch):
        return task_loss(model.tasks[task], logits, batch)
    return fn


class _StopFlag:
    """Turns SIGINT/SIGTERM into a request to stop after the current step."""

    def __init__(self):
        self.signum = None
        self._old = {}

    def __enter__(self):
        for s in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread
                pass
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, h in self._old.items():
            signal.signal(s, h)


def make_sampler(train_sets: dict[str, TrainSet], cfg: TrainConfig, seed: int, rank: int = 0,
                 world_size: int = 1) -> MultiTaskBatchSampler:
    """The batch sampler `train` draws from (also what benchmarks use to replay its batches)."""
    return MultiTaskBatchSampler(
        {t: s.indices for t, s in train_sets.items()}, cfg.batch_size, seed, cfg.sampling, cfg.temperature,
        cfg.epoch_size, lengths={t: s.data.lengths for t, s in train_sets.items()}, bucket=cfg.bucket,
        groups={t: s.data.groups for t, s in train_sets.items() if s.data.groups is not None},
        rank=rank, world_size=world_size)


def total_steps(cfg: TrainConfig, batches_per_epoch: int) -> int:
    """Updates of a training run: max_steps, or epochs x batches per epoch (at least one)."""
    return cfg.max_steps or max(1, math.ceil(cfg.epochs * batches_per_epoch))


def train(model, train_sets: dict[str, TrainSet], cfg: TrainConfig, seed: int, out_dir: Path, accelerator,
          loss_fn: LossFn | None = None, run_config: dict | None = None, desc: str = "train",
          identity: dict | None = None) -> dict:
    """Algorithm 1 with the paper's optimiser settings; resumes from out_dir/checkpoints if present.

    `identity` (what the stage depends on, see mtkd.stages) is stored in every checkpoint; a
    checkpoint written under another identity is refused. Returns {"steps", "epochs"}: where the
    run ended (all updates, resumed ones included), and {"seconds", "examples", "tokens"} for this
    call (not counting work done before a resume)."""
    out_dir = Path(out_dir)
    loss_fn = loss_fn or default_loss(model)
    torch.manual_seed(seed)
    sampler = make_sampler(train_sets, cfg, seed, rank=accelerator.process_index, world_size=accelerator.num_processes)
    total = total_steps(cfg, len(sampler))
    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = torch.optim.Adamax if cfg.optimizer == Optimizer.ADAMAX else torch.optim.AdamW
    ddp_model, optimizer = accelerator.prepare(model, opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay))
    amp, mode = autocast(cfg.precision, accelerator.device)
    scaler = torch.amp.GradScaler(accelerator.device.type, enabled=mode == "fp16")  # bf16 and fp32 need none
    run = _Run(accelerator=accelerator, model=ddp_model, optimizer=optimizer, scaler=scaler, sampler=sampler,
               params=params, cfg=cfg, total=total, ckpt_dir=out_dir / "checkpoints", desc=desc,
               expect={"tasks": sorted(train_sets), "encoder": model.encoder_name, "total_steps": total},
               run_config=run_config, identity=identity)
    _resume(run, model)
    logs = _Logs(out_dir, run.step, total, desc, cfg.log_every, accelerator.is_main_process)
    pad = 8 if mode != "no" else 1  # tensor-core friendly widths under AMP
    n_examples = n_tokens = 0
    ddp_model.train()
    try:
        with _StopFlag() as stop:
            while run.step < total:
                for task, idx, global_n in sampler:
                    # -- one Algorithm 1 update on this batch's task
                    lr = lr_at(run.step, total, cfg)
                    for group in optimizer.param_groups:
                        group["lr"] = lr
                    host_batch = collate(train_sets[task].data, idx, pad_multiple=pad)
                    n_batch_tokens = int(host_batch["attention_mask"].sum())  # on the host: no GPU sync
                    batch = {k: v.to(accelerator.device) for k, v in host_batch.items()}
                    rng_before = torch.get_rng_state()  # to checkpoint the exact state before a bad step
                    with amp:
                        logits = ddp_model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], task=task)
                    # sum / (global batch / ranks): DDP's gradient average then equals the global mean
                    loss = loss_fn(task, logits, batch).sum() * accelerator.num_processes / global_n
                    loss_value = diverged = stop_now = None  # None: not read at this step
                    if _should_check(run, stop):
                        loss_value, diverged, stop_now = _check_loss(loss, stop, accelerator)
                    if diverged:
                        _rewind_and_raise(run, task, idx, train_sets[task].data.ids, loss_value, rng_before)
                    _optimizer_step(run, loss)
                    run.step += 1
                    # -- bookkeeping
                    n_examples += len(idx)
                    n_tokens += n_batch_tokens
                    logs.after_step(run.step, sampler.epoch, task, lr, loss_value)
                    if accelerator.num_processes == 1:
                        stop_now = stop.signum is not None  # a signal that came during this step
                    if _checkpoint_due(run, run.step, stop_now):
                        logs.flush()
                        _save_checkpoint(run)
                    if stop_now:
                        raise _interrupted(run, stop.signum)
                    if run.step >= total:
                        break
    finally:  # also on an interruption / divergence: the log is complete up to the checkpoint
        logs.close()
        accelerator.free_memory()  # drop the prepared references so the next stage's model can be freed
    return {"steps": run.step, "epochs": round(run.step / len(sampler), 3), "seconds": round(time.time() - logs.t0, 2),
            "examples": n_examples, "tokens": n_tokens}


@dataclass
class _Run:
    """What `train`'s helpers share: the prepared training pieces and how far the run is."""
    accelerator: object
    model: torch.nn.Module  # as prepared (DDP-wrapped under torchrun)
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler  # enabled under fp16 only
    sampler: MultiTaskBatchSampler
    params: list[torch.nn.Parameter]  # the trainable ones, which are clipped
    cfg: TrainConfig
    total: int  # updates of the whole run
    ckpt_dir: Path
    desc: str
    expect: dict  # what a checkpoint must match to be resumed (stored in each one)
    run_config: dict | None
    identity: dict | None
    step: int = 0  # updates taken, resumed ones included

    @property
    def check_every(self) -> int:
        return max(1, self.cfg.check_every)


def _resume(run: _Run, model) -> None:
    """Load the newest good checkpoint, if any, into `model` (unwrapped), the optimizer, sampler and
    grad scaler, and set run.step. A checkpoint written under another identity is refused."""
    problem = checkpoint_problem(run.ckpt_dir, run.identity)  # a checkpoint of other settings or data
    if problem:
        raise CheckpointError(problem)
    resumed = load_latest_checkpoint(run.ckpt_dir, model, run.optimizer, run.expect)  # skips damaged ones
    if not resumed:
        return
    path, state = resumed
    run.sampler.load_state_dict(state["sampler"])
    run.step = state["step"]
    log.info("resumed %s from %s (step %d of %d)", run.desc, path, run.step, run.total)
    if run.step and "grad_scaler" in state and run.scaler.is_enabled():
        run.scaler.load_state_dict(state["grad_scaler"])


def _should_check(run: _Run, stop: _StopFlag) -> bool:
    """Read the loss of the update about to be taken? Reading costs a GPU sync (and a collective under
    DDP), so only every `check_every` steps, and also before every checkpoint: a checkpoint must never
    hold weights an unchecked NaN spoilt. Every rank computes the same answer (a signal only counts
    here when running alone), so all ranks reduce at the same steps."""
    after = run.step + 1  # the step count once this update is taken
    return after % run.check_every == 0 or _checkpoint_due(run, after, run.accelerator.num_processes == 1
                                                           and stop.signum is not None)


def _check_loss(loss: torch.Tensor, stop: _StopFlag, accelerator) -> tuple[float, bool, bool]:
    """(loss value, diverged, stop now). Under DDP every rank must stop (diverged / signal) at the same
    step, else the others wait forever in the next collective: share both flags, and the loss for the log."""
    loss_value = float(loss.detach())
    diverged, stop_now = not math.isfinite(loss_value), stop.signum is not None
    if accelerator.num_processes > 1:
        flags = accelerator.reduce(torch.tensor([float(diverged), float(stop_now), loss_value],
                                                device=accelerator.device), "sum")
        diverged, stop_now = bool(flags[0] > 0), bool(flags[1] > 0)
        # each rank's loss is its share of the global mean scaled by the world size
        loss_value = float(flags[2]) / accelerator.num_processes if not diverged else loss_value
    return loss_value, diverged, stop_now


def _rewind_and_raise(run: _Run, task: str, idx: np.ndarray, data_ids, loss_value: float,
                      rng_before: torch.Tensor) -> NoReturn:
    """Raise TrainingDiverged naming the batch; when every step is checked, first checkpoint the state
    before this batch (the weights are still the last good ones: no step was taken)."""
    ids = [data_ids[i] for i in idx[:10]]
    shown = loss_value if not math.isfinite(loss_value) else "not finite on another rank"
    where = f"{run.desc}: loss is {shown} at step {run.step}, task {task}, batch of {len(idx)} examples with ids {ids}..."
    if run.check_every > 1:  # earlier unchecked steps may already have spoilt the weights
        raise TrainingDiverged(f"{where}; the loss is read every {run.check_every} steps, so the last good "
                               f"state is the newest checkpoint in {run.ckpt_dir}")
    # rewind the sampler and RNG so the checkpoint is exactly the state before this batch
    run.sampler.position -= 1
    torch.set_rng_state(rng_before)
    _save_checkpoint(run)
    raise TrainingDiverged(f"{where}; checkpoint of the last good state saved")


def _optimizer_step(run: _Run, loss: torch.Tensor) -> None:
    """Backward, clip, step and zero the gradients, through the grad scaler (a no-op unless fp16)."""
    run.accelerator.backward(run.scaler.scale(loss))
    if run.cfg.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)  # clip the true gradients, not the scaled ones
        run.accelerator.clip_grad_norm_(run.params, run.cfg.grad_clip)
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)


def _checkpoint_due(run: _Run, step: int, stop_now: bool | None) -> bool:
    """After update `step`: every `checkpoint_every` steps, at each epoch end, at the last step and on a stop."""
    return bool(step % run.cfg.checkpoint_every == 0 or run.sampler.position == len(run.sampler)
                or step == run.total or stop_now)


def _save_checkpoint(run: _Run) -> None:
    """Rank 0 writes the checkpoint of run.step; every rank waits for it."""
    accelerator = run.accelerator
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        scaler = {"grad_scaler": run.scaler.state_dict()} if run.scaler.is_enabled() else {}
        state = {**run.expect, "step": run.step, "sampler": run.sampler.state_dict(), "config": run.run_config,
                 "identity": run.identity, **scaler}
        save_checkpoint(run.ckpt_dir, accelerator.unwrap_model(run.model), run.optimizer, state,
                        keep=run.cfg.keep_checkpoints)
    accelerator.wait_for_everyone()  # no rank leaves (e.g. exits after a stop) before the checkpoint is complete


def _interrupted(run: _Run, signum: int | None) -> TrainingInterrupted:
    return TrainingInterrupted(f"{run.desc}: stopped by signal {signum or '(on another rank)'} after step {run.step}; "
                               f"checkpoint saved in {run.ckpt_dir}; rerun the same command to resume")


class _Logs:
    """Rank 0's records of a `train` call: metrics.jsonl (one line per step whose loss was read),
    TensorBoard and the tqdm bar. Other ranks write nothing (their bar is disabled)."""

    def __init__(self, out_dir: Path, step: int, total: int, desc: str, log_every: int, main: bool):
        self.main, self.log_every = main, log_every
        path = out_dir / "metrics.jsonl"
        if main and path.is_file():
            _truncate_log(path, step)  # drop records of steps the checkpoint does not hold
        self.metrics = open(path, "a") if main else None
        self.tb = _tensorboard(out_dir / "tensorboard") if main else None
        self.running: dict[str, float] = {}  # per task: a moving average of the loss, for the bar
        self.t0 = time.time()  # the clock of this call: record times and the seconds `train` returns
        self.bar = tqdm(total=total, initial=step, desc=desc, disable=not main, dynamic_ncols=True, mininterval=2)

    def after_step(self, step: int, epoch: int, task: str, lr: float, loss_value: float | None) -> None:
        """Update `step` is done; `loss_value` is None when its loss was not read."""
        if not self.main:
            return
        if loss_value is not None:
            avg = self.running
            avg[task] = loss_value if task not in avg else 0.95 * avg[task] + 0.05 * loss_value
            rec = {"step": step, "epoch": epoch, "task": task, "loss": round(loss_value, 6), "lr": lr,
                   "time": round(time.time() - self.t0, 3)}
            self.metrics.write(json.dumps(rec) + "\n")
            if self.tb is not None:
                self.tb.add_scalar(f"loss/{task}", loss_value, step)
                self.tb.add_scalar("lr", lr, step)
        if step % self.log_every == 0:
            self.bar.set_postfix({t: f"{v:.3f}" for t, v in self.running.items()}, refresh=False)
        self.bar.update(1)

    def flush(self) -> None:
        if self.main:
            self.metrics.flush()

    def close(self) -> None:
        self.bar.close()
        if self.metrics is not None:
            self.metrics.close()
        if self.tb is not None:
            self.tb.close()


def _truncate_log(path: Path, step: int) -> None:
    """Keep the records of steps <= `step`: after a crash the log may hold steps past the checkpoint
    the run resumes from, which the resumed run logs again."""
    lines = path.read_text().splitlines(keepends=True)
    keep = []
    for ln in lines:
        try:
            if json.loads(ln)["step"] <= step:
                keep.append(ln)
        except (ValueError, KeyError, TypeError):
            continue  # a torn last line
    if len(keep) != len(lines):
        atomic_write(path, "".join(keep))


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional dependency
        return None
    return SummaryWriter(str(folder))


def predict_logits(model, data: EncodedSplit, task: str, indices=None, batch_size: int = 128,
                   max_tokens: int | None = None, accelerator=None, precision: Precision = Precision.FP32
                   ) -> np.ndarray:
    """Logits (N, C) for examples `indices` of `data` (default: all), in the given order, in the
    prediction side's length-sorted batches of at most `batch_size` examples and `max_tokens` padded
    tokens (`mtkd.inference.batched_logits`), so batches carry little padding. Under several
    processes (`accelerator`) each rank predicts every n-th example (round-robin over lengths) and
    every rank gets all of them, in order (a collective: every rank calls it at the same point)."""
    indices = np.arange(len(data)) if indices is None else np.asarray(indices)
    n = accelerator.num_processes if accelerator is not None else 1
    mine = np.arange(accelerator.process_index, len(indices), n) if n > 1 else np.arange(len(indices))
    rows = indices[mine]
    device = accelerator.device if accelerator is not None else next(model.parameters()).device
    model.eval()
    width = {task: model.heads[model.tasks[task].head_name].out.out_features}
    with torch.inference_mode(), autocast(precision, device)[0]:
        part = batched_logits(model.run_batch, [task], width, data.rows(rows), data.rows(rows, data.token_type_ids),
                              int(data.meta.get("pad_id", 0)), batch_size, max_tokens)[task]
    if n == 1:
        return part
    from accelerate.utils import gather_object

    out = None
    for pos, values in gather_object([(mine, part)]):
        out = np.zeros((len(indices), values.shape[1]), dtype=np.float32) if out is None else out
        out[pos] = values
    return out
