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
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from mtkd.checkpoint import load_latest_checkpoint, save_checkpoint
from mtkd.config import Optimizer, Precision, TrainConfig
from mtkd.data import EncodedSplit, collate, length_batches
from mtkd.errors import CheckpointError, TrainingDiverged
from mtkd.identity import checkpoint_problem
from mtkd.losses import task_loss
from mtkd.sampler import MultiTaskBatchSampler

log = logging.getLogger(__name__)

# loss_fn(task, logits, batch) -> per-example losses (B,)
LossFn = Callable[[str, torch.Tensor, dict], torch.Tensor]


@dataclass
class TrainSet:
    data: EncodedSplit
    indices: np.ndarray  # which examples of `data` to train on (after caps)


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

    `identity` (what the stage depends on, see mtkd.identity) is stored in every checkpoint; a
    checkpoint written under another identity is refused. Returns {"steps", "epochs"}: where the
    run ended (all updates, resumed ones included), and {"seconds", "examples", "tokens"} for this
    call (not counting work done before a resume)."""
    out_dir = Path(out_dir)
    main = accelerator.is_main_process
    loss_fn = loss_fn or default_loss(model)
    torch.manual_seed(seed)
    sampler = make_sampler(train_sets, cfg, seed, rank=accelerator.process_index, world_size=accelerator.num_processes)
    total = total_steps(cfg, len(sampler))
    params = [p for p in model.parameters() if p.requires_grad]
    opt_cls = torch.optim.Adamax if cfg.optimizer == Optimizer.ADAMAX else torch.optim.AdamW
    optimizer = opt_cls(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    ddp_model, optimizer = accelerator.prepare(model, optimizer)
    expect = {"tasks": sorted(train_sets), "encoder": model.encoder_name, "total_steps": total}
    step, state = 0, {}
    problem = checkpoint_problem(out_dir / "checkpoints", identity)  # a checkpoint of other settings or data
    if problem:
        raise CheckpointError(problem)
    resumed = load_latest_checkpoint(out_dir / "checkpoints", model, optimizer, expect)  # skips damaged ones
    if resumed:
        path, state = resumed
        sampler.load_state_dict(state["sampler"])
        step = state["step"]
        log.info("resumed %s from %s (step %d of %d)", desc, path, step, total)

    def checkpoint():
        accelerator.wait_for_everyone()
        if main:
            save_checkpoint(out_dir / "checkpoints", accelerator.unwrap_model(ddp_model), optimizer,
                            {**expect, "step": step, "sampler": sampler.state_dict(), "config": run_config,
                             "identity": identity, **({"grad_scaler": scaler.state_dict()} if scaler.is_enabled() else {})},
                            keep=cfg.keep_checkpoints)
        accelerator.wait_for_everyone()  # no rank leaves (e.g. exits after a stop) before the checkpoint is complete

    if main and (out_dir / "metrics.jsonl").is_file():
        _truncate_log(out_dir / "metrics.jsonl", step)  # drop records of steps the checkpoint does not hold
    metrics_f = open(out_dir / "metrics.jsonl", "a") if main else None
    tb = _tensorboard(out_dir / "tensorboard") if main else None
    running: dict[str, float] = {}
    amp, mode = autocast(cfg.precision, accelerator.device)
    scaler = torch.amp.GradScaler(accelerator.device.type, enabled=mode == "fp16")
    if step and "grad_scaler" in state and scaler.is_enabled():
        scaler.load_state_dict(state["grad_scaler"])
    pad = 8 if mode != "no" else 1  # tensor-core friendly widths under AMP
    check_every = max(1, cfg.check_every)
    n_examples = n_tokens = 0
    t0 = time.time()
    bar = tqdm(total=total, initial=step, desc=desc, disable=not main, dynamic_ncols=True, mininterval=2)
    ddp_model.train()
    try:
        with _StopFlag() as stop:
            while step < total:
                for task, idx, global_n in sampler:
                    # -- one Algorithm 1 update on this batch's task
                    lr = lr_at(step, total, cfg)
                    for g in optimizer.param_groups:
                        g["lr"] = lr
                    host_batch = collate(train_sets[task].data, idx, pad_multiple=pad)
                    n_batch_tokens = int(host_batch["attention_mask"].sum())  # on the host: no GPU sync
                    batch = {k: v.to(accelerator.device) for k, v in host_batch.items()}
                    rng_before = torch.get_rng_state()  # to checkpoint the exact state before a bad step
                    with amp:
                        logits = ddp_model(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"], task=task)
                    per_example = loss_fn(task, logits, batch)
                    # sum / (global batch / ranks): DDP's gradient average then equals the global mean
                    loss = per_example.sum() * accelerator.num_processes / global_n
                    # also before every checkpoint: a checkpoint must never hold weights an unchecked NaN spoilt
                    checking = ((step + 1) % check_every == 0 or step + 1 == total or (step + 1) % cfg.checkpoint_every == 0
                                or sampler.position == len(sampler)
                                or (accelerator.num_processes == 1 and stop.signum is not None))
                    loss_value = diverged = stop_now = None
                    if checking:
                        loss_value = float(loss.detach())
                        diverged, stop_now = not math.isfinite(loss_value), stop.signum is not None
                        if accelerator.num_processes > 1:
                            # every rank must stop (diverged / signal) at the same step, else the others wait
                            # forever in the next collective: share both flags, and the loss for the log
                            flags = accelerator.reduce(torch.tensor([float(diverged), float(stop_now), loss_value],
                                                                    device=accelerator.device), "sum")
                            diverged, stop_now = bool(flags[0] > 0), bool(flags[1] > 0)
                            # each rank's loss is its share of the global mean scaled by the world size
                            loss_value = float(flags[2]) / accelerator.num_processes if not diverged else loss_value
                    if diverged:
                        ids = [train_sets[task].data.ids[i] for i in idx[:10]]
                        shown = loss_value if not math.isfinite(loss_value) else "not finite on another rank"
                        where = f"{desc}: loss is {shown} at step {step}, task {task}, batch of {len(idx)} examples with ids {ids}..."
                        if check_every > 1:  # earlier unchecked steps may already have spoilt the weights
                            raise TrainingDiverged(f"{where}; the loss is read every {check_every} steps, so the last good "
                                                   f"state is the newest checkpoint in {out_dir / 'checkpoints'}")
                        # the weights are still the last good ones (no step was taken); rewind the sampler
                        # and RNG so the checkpoint is exactly the state before this batch
                        sampler.position -= 1
                        torch.set_rng_state(rng_before)
                        checkpoint()
                        raise TrainingDiverged(f"{where}; checkpoint of the last good state saved")
                    accelerator.backward(scaler.scale(loss))
                    if cfg.grad_clip > 0:
                        scaler.unscale_(optimizer)
                        accelerator.clip_grad_norm_(params, cfg.grad_clip)
                    scaler.step(optimizer)
                    scaler.update()
                    optimizer.zero_grad(set_to_none=True)
                    step += 1
                    # -- bookkeeping
                    n_examples += len(idx)
                    n_tokens += n_batch_tokens
                    if main:
                        if checking:
                            running[task] = loss_value if task not in running else 0.95 * running[task] + 0.05 * loss_value
                            rec = {"step": step, "epoch": sampler.epoch, "task": task, "loss": round(loss_value, 6), "lr": lr,
                                   "time": round(time.time() - t0, 3)}
                            metrics_f.write(json.dumps(rec) + "\n")
                            if tb is not None:
                                tb.add_scalar(f"loss/{task}", loss_value, step)
                                tb.add_scalar("lr", lr, step)
                        if step % cfg.log_every == 0:
                            bar.set_postfix({t: f"{v:.3f}" for t, v in running.items()}, refresh=False)
                        bar.update(1)
                    at_epoch_end = sampler.position == len(sampler)
                    if accelerator.num_processes == 1:
                        stop_now = stop.signum is not None  # a signal that came during this step
                    if step % cfg.checkpoint_every == 0 or at_epoch_end or step == total or stop_now:
                        if main:
                            metrics_f.flush()
                        checkpoint()
                    if stop_now:
                        raise TrainingInterrupted(f"{desc}: stopped by signal {stop.signum or '(on another rank)'} after step {step}; "
                                                  f"checkpoint saved in {out_dir / 'checkpoints'}; rerun the same command to resume")
                    if step >= total:
                        break
    finally:  # also on an interruption / divergence: the log is complete up to the checkpoint
        bar.close()
        if metrics_f:
            metrics_f.close()
        if tb is not None:
            tb.close()
        accelerator.free_memory()  # drop the prepared references so the next stage's model can be freed
    return {"steps": step, "epochs": round(step / len(sampler), 3), "seconds": round(time.time() - t0, 2),
            "examples": n_examples, "tokens": n_tokens}


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
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(keep))
        tmp.replace(path)


def _tensorboard(folder: Path):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # optional dependency
        return None
    return SummaryWriter(str(folder))


@torch.inference_mode()
def predict_logits(model, data: EncodedSplit, task: str, indices=None, batch_size: int = 128,
                   device=None, max_tokens: int | None = None) -> np.ndarray:
    """Logits (N, C) for examples `indices` of `data` (default: all), in the given order.
    Examples are run sorted by length in batches of at most `batch_size` examples and `max_tokens`
    padded tokens (see `length_batches`), so batches carry little padding."""
    model.eval()
    device = device or next(model.parameters()).device
    indices = np.arange(len(data)) if indices is None else np.asarray(indices)
    out = np.zeros((len(indices), model.heads[model.tasks[task].head_name].out.out_features), dtype=np.float32)
    for sel in length_batches(data.lengths[indices], batch_size, max_tokens):
        b = collate(data, indices[sel])
        logits = model(b["input_ids"].to(device), b["attention_mask"].to(device), b["token_type_ids"].to(device), task=task)
        out[sel] = logits.float().cpu().numpy()
    return out
