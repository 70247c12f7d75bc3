"""Shared pieces of the benchmark suite: modes, the environment (encoder, config, data), timing
(step clock, interleaved repeats, median/min/max), the two training contenders (mtkd's own
`mtkd.loop.train` and Hugging Face `Trainer`), tables and JSON output.

Every benchmark script has `run(env) -> payload`; `run_all.py` calls them in one process, or a script
runs alone (`python benchmarks/bench_train.py --quick`). Methodology (see benchmarks/README.md):

- same encoder (the config's, all-MiniLM-L6-v2 by default), same real GLUE data (configs/glue-cpu.yaml's
  data path), same process, same threads, fp32;
- contenders interleaved A B C A B C ..., one discarded warm-up round first, then `repeats` timed rounds;
  each number is reported as the median of the rounds with min/max; a ratio is the median (min/max) of
  the per-round paired ratios A_r / B_r, so slow drift of the machine cancels;
- a training run is timed from the start of its first forward to the end of its last optimizer step
  (start-up and tear-down excluded; they are reported separately), and every contender of a round trains
  on exactly the same examples (one pass over a fixed seeded subset of steps x batch size examples), so
  example length mix cannot favour one contender.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "glue-cpu.yaml"
DEFAULT_OUT = REPO / "results" / "bench"
BATCH = 32
LR = 2e-4

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


# ------------------------------------------------------------------------------------------ memory
def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return None


def rss_now_mb() -> float:
    return _status_mb("VmRSS") or float("nan")


def peak_rss_mb() -> float:
    """This process's peak resident memory (MB): VmHWM, the high-water mark of its own address space.
    Not ru_maxrss: Linux carries ru_maxrss over fork + exec, so a subprocess of a large parent
    reports at least the parent's RSS at the fork (the 3.4-3.5 GB "peaks" of earlier runs)."""
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ------------------------------------------------------------------------------------------ modes
@dataclass(frozen=True)
class Mode:
    name: str
    repeats: int  # timed rounds
    warmup_round: bool  # one discarded warm-up round before the timed ones
    warmup_steps: int  # steps of each contender's warm-up run
    train_steps: int  # timed steps of each training run (bench_train)
    padded_per_task: bool  # False: Trainer-padded measured once (SST-2) and used for every task's ratio
    trainer_group_by_length: bool  # also run Trainer's own group_by_length on the subset (informative)
    distill_steps: int
    infer_examples: int  # examples for soft-target generation vs padded forward
    heads_examples: int  # examples for all-heads vs per-task models
    flops_steps: int  # timed MTL steps of the efficiency benchmark
    matmul_n: int
    matmul_reps: int  # matmuls per peak measurement (median taken)
    rss_steps: int  # MTL steps of the peak-RSS subprocess


MODES = {
    # tiny random encoder, a handful of steps: checks the machinery, not the machine (seconds)
    "smoke": Mode("smoke", repeats=1, warmup_round=False, warmup_steps=1, train_steps=2, padded_per_task=False,
                  trainer_group_by_length=False, distill_steps=2, infer_examples=64, heads_examples=64,
                  flops_steps=2, matmul_n=256, matmul_reps=3, rss_steps=3),
    # the real encoder; whole suite about 10 minutes on an idle 2-core machine (estimate)
    "quick": Mode("quick", repeats=3, warmup_round=True, warmup_steps=3, train_steps=10, padded_per_task=False,
                  trainer_group_by_length=False, distill_steps=8, infer_examples=1536, heads_examples=128,
                  flops_steps=8, matmul_n=2048, matmul_reps=10, rss_steps=100),
    # more rounds and steps (about 45-60 minutes on 2 cores, estimate)
    "full": Mode("full", repeats=5, warmup_round=True, warmup_steps=5, train_steps=30, padded_per_task=True,
                 trainer_group_by_length=True, distill_steps=24, infer_examples=4096, heads_examples=512,
                 flops_steps=30, matmul_n=2048, matmul_reps=20, rss_steps=300),
}

# targets printed next to the ratios (issue 4); direction ">=" unless noted
TARGETS = {
    "train_vs_trainer_padded": (">=", 2.0),
    "train_vs_trainer_dynamic": (">=", 1.0),
    "distill_offline_vs_live": (">=", 1.8),
    "softtarget_gen_vs_padded_forward": (">=", 2.0),
    "all_heads_one_pass_vs_per_task_models": (">=", 4.0),
    "train_step_fraction_of_matmul_peak": (">=", 0.60),
    "train_step_32x128_fraction_of_matmul_peak": (">=", 0.60),
    "peak_rss_mtl_mb": ("<=", 3072.0),
}


def target_for(key: str):
    for prefix, t in sorted(TARGETS.items(), key=lambda kv: -len(kv[0])):
        if key == prefix or key.startswith(prefix + "_"):
            return t
    return None


# ------------------------------------------------------------------------------------ environment
@dataclass
class Env:
    mode: Mode
    out_dir: Path
    encoder: str  # folder of the encoder (HF layout, tokenizer included)
    encoder_label: str
    ctx: object  # mtkd.recipes.context.RunContext over configs/glue-cpu.yaml
    work: Path  # scratch folder (run folders, tiny encoder), removed at the end
    data_root: Path
    threads: int
    overrides: list

    @property
    def smoke(self) -> bool:
        return self.mode.name == "smoke"


def default_data_root() -> Path:
    env = os.environ.get("MTKD_DATA_ROOT")
    return Path(env).expanduser() if env else (REPO.parent / "shared" / "data" / "glue")


def quiet_hf():
    import transformers

    transformers.logging.set_verbosity_error()
    try:
        transformers.utils.logging.disable_progress_bar()
    except AttributeError:
        pass
    import logging
    logging.getLogger("mtkd").setLevel(logging.WARNING)


def use_torch_dropout(model):
    """In place: undo mtkd.dropout.use_fast_dropout, i.e. PyTorch's nn.Dropout and transformers' SDPA
    attention, as transformers runs the encoder (and as mtkd runs it on a GPU)."""
    import torch

    from mtkd.dropout import FastDropout

    for parent in model.modules():
        for name, child in list(parent.named_children()):
            if isinstance(child, FastDropout):
                setattr(parent, name, torch.nn.Dropout(child.p, child.inplace))
    model.encoder.set_attn_implementation("sdpa")
    return model


def make_env(args) -> Env:
    import torch

    from mtkd.config import load_config
    from mtkd.model import resolve_encoder
    from mtkd.recipes.context import RunContext
    from mtkd.testing import save_tiny_encoder

    quiet_hf()
    mode = MODES[args.mode]
    if getattr(args, "repeats", None):
        mode = dataclasses.replace(mode, repeats=args.repeats)
    if getattr(args, "steps", None):
        mode = dataclasses.replace(mode, train_steps=args.steps, distill_steps=args.steps, flops_steps=args.steps)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="mtkd-bench-"))
    if getattr(args, "encoder", None):
        encoder, label = str(Path(args.encoder).resolve()), str(args.encoder)
    elif mode.name == "smoke":
        encoder, label = str(save_tiny_encoder(work / "tiny-encoder")), "tiny random BERT (2 layers, hidden 64)"
    else:
        encoder, label = resolve_encoder("default"), "default (all-MiniLM-L6-v2)"
    data_root = Path(args.data_root).expanduser().resolve() if args.data_root else default_data_root()
    overrides = [f"encoder.name={encoder}", f"data.root={data_root}", "mtl.precision=fp32", "finetune.precision=fp32"]
    if args.cache_dir:
        overrides.append(f"data.cache_dir={Path(args.cache_dir).expanduser().resolve()}")
    ctx = RunContext(load_config(CONFIG, overrides), out_dir=work / "ctx")
    warn_if_busy(mode.name)
    out_dir = Path(args.out) if args.out else DEFAULT_OUT
    return Env(mode, out_dir, encoder, label, ctx, work, data_root, torch.get_num_threads(), overrides)


def warn_if_busy(mode_name: str) -> None:
    """Timings on a busy machine are distorted: say so (smoke runs time nothing)."""
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = 0.0
    if mode_name != "smoke" and load1 > 0.5:
        print(f"WARNING: the machine is not idle (1-minute load average {load1:.2f}); timings will be distorted",
              file=sys.stderr, flush=True)


def close_env(env: Env) -> None:
    shutil.rmtree(env.work, ignore_errors=True)


def add_common_args(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--quick", dest="mode", action="store_const", const="quick", help="default: about 10 minutes on 2 idle cores")
    g.add_argument("--full", dest="mode", action="store_const", const="full", help="more repeats and steps")
    g.add_argument("--smoke", dest="mode", action="store_const", const="smoke", help="tiny random encoder, seconds (tests)")
    p.set_defaults(mode="quick")
    p.add_argument("--out", help=f"output folder (default {DEFAULT_OUT.relative_to(REPO)})")
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's default, all cores)")
    p.add_argument("--data-root", help="GLUE folder (default $MTKD_DATA_ROOT or ../shared/data/glue)")
    p.add_argument("--cache-dir", help="tokenised-data cache (default $MTKD_CACHE or ~/.cache/mtkd)")
    p.add_argument("--encoder", help="encoder folder instead of the mode's (default: the bundled MiniLM; smoke: tiny)")
    p.add_argument("--repeats", type=int, help="timed rounds (overrides the mode's)")
    p.add_argument("--steps", type=int, help="timed steps of every training run (overrides the mode's)")


def machine_info() -> dict:
    import torch
    import transformers

    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = ""
    try:
        txt = Path("/proc/cpuinfo").read_text()
        fl = next((ln for ln in txt.splitlines() if ln.startswith("flags")), "")
        flags = " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f" {f}" in fl)
    except OSError:
        pass
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:
        affinity = os.cpu_count()
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    return {
        "cpu": cpu, "cpu_flags": flags, "logical_cpus": os.cpu_count(), "usable_cpus": affinity,
        "torch_threads": torch.get_num_threads(), "torch_interop_threads": torch.get_num_interop_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"), "torch": torch.__version__,
        "transformers": transformers.__version__, "python": platform.python_version(),
        "platform": platform.platform(), "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "loadavg_at_start": load,
    }


# ----------------------------------------------------------------------------------------- timing
def stats(values) -> dict:
    vals = [float(v) for v in values]
    if not vals:
        return {"median": None, "min": None, "max": None, "n": 0, "values": []}
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals), "n": len(vals),
            "values": [round(v, 6) for v in vals]}


def interleave(contenders: list[tuple[str, Callable[[int], dict]]], repeats: int, warmup: bool = True,
               label: str = "") -> dict[str, list[dict]]:
    """Run the contenders A B C A B C ...: round -1 is a discarded warm-up, then rounds 0..repeats-1.
    fn(round) returns a dict of measurements; returns name -> list of the timed rounds' dicts."""
    out: dict[str, list[dict]] = {name: [] for name, _ in contenders}
    rounds = ([-1] if warmup else []) + list(range(repeats))
    for r in rounds:
        for name, fn in contenders:
            t0 = time.perf_counter()
            res = fn(r)
            gc.collect()
            tag = "warm-up" if r < 0 else f"round {r + 1}/{repeats}"
            key = next((k for k in ("examples_per_s", "flop_per_s") if k in res), None)
            shown = f"{key}={res[key]:.3g}" if key else ""
            print(f"  [{label}] {tag:>11} {name:<28} {shown:<26} ({time.perf_counter() - t0:.1f} s)", file=sys.stderr, flush=True)
            if r >= 0:
                out[name].append(res)
    return out


def summarize(runs: list[dict], keys=None) -> dict:
    """Each numeric key -> stats over the rounds; plus the raw per-round records."""
    keys = keys or [k for k, v in runs[0].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return {**{k: stats(r[k] for r in runs) for k in keys}, "runs": runs}


def paired_ratio(a: list[dict], b: list[dict], key: str = "examples_per_s") -> dict:
    """stats of a[r][key] / b[r][key] over rounds r (a and b ran in the same rounds)."""
    return stats(x[key] / y[key] for x, y in zip(a, b))


class StepClock:
    """Times the training steps of `module`: a forward pre-hook marks the start of each training forward
    (and records its batch shape, real tokens), a global optimizer step post-hook marks each step's end.
    Works for MTModel called positionally (mtkd loop) and HF models called with keyword arguments."""

    def __init__(self, module):
        self.module = module
        self.starts: list[float] = []
        self.shapes: list[tuple[int, int, int]] = []  # (batch, padded width, real tokens)
        self.ends: list[float] = []

    def _pre(self, mod, args, kwargs):
        if not mod.training:
            return
        ids = kwargs.get("input_ids", args[0] if args else None)
        mask = kwargs.get("attention_mask", args[1] if len(args) > 1 else None)
        self.starts.append(time.perf_counter())
        self.shapes.append((int(ids.shape[0]), int(ids.shape[1]), int(mask.sum()) if mask is not None else int(ids.numel())))

    def _post(self, opt, args, kwargs):
        self.ends.append(time.perf_counter())

    def __enter__(self):
        self.call_start = time.perf_counter()
        self._h1 = self.module.register_forward_pre_hook(self._pre, with_kwargs=True)
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._h2 = register_optimizer_step_post_hook(self._post)
        return self

    def __exit__(self, *exc):
        self.call_end = time.perf_counter()
        self._h1.remove()
        self._h2.remove()

    def result(self, expect_steps: int | None = None) -> dict:
        n = len(self.ends)
        if n == 0 or len(self.starts) < n:
            raise RuntimeError(f"step clock saw {len(self.starts)} forwards and {n} optimizer steps")
        if expect_steps is not None and n != expect_steps:
            raise RuntimeError(f"expected {expect_steps} optimizer steps, saw {n}")
        shapes = self.shapes[:n]
        seconds = self.ends[-1] - self.starts[0]
        ex = sum(s[0] for s in shapes)
        tok = sum(s[2] for s in shapes)
        padded = sum(s[0] * s[1] for s in shapes)
        first = self.ends[0] - self.starts[0]
        rest = self.ends[-1] - self.ends[0]
        return {
            "steps": n, "examples": ex, "tokens": tok, "padded_tokens": padded, "seconds": seconds,
            "examples_per_s": ex / seconds, "tokens_per_s": tok / seconds, "padded_tokens_per_s": padded / seconds,
            "padding_fraction": 1.0 - tok / padded,
            "first_step_s": first,
            "steady_examples_per_s": (ex - shapes[0][0]) / rest if n > 1 and rest > 0 else ex / seconds,
            "startup_s": self.starts[0] - self.call_start, "teardown_s": self.call_end - self.ends[-1],
            "shapes": [list(s) for s in shapes],
        }


# ------------------------------------------------------------------------------------------- data
def subset(indices: np.ndarray, n: int, seed: int) -> np.ndarray:
    """A seeded random subset of `indices` of size n (sorted)."""
    indices = np.asarray(indices)
    if n > len(indices):
        raise ValueError(f"asked for {n} examples of a set of {len(indices)}")
    return np.sort(np.random.default_rng(seed).choice(indices, size=n, replace=False)).astype(np.int64)


def allocate_batches(sizes: dict[str, int], n_batches: int) -> dict[str, int]:
    """Split n_batches over tasks in proportion to their (capped) training sizes, largest remainder."""
    total = sum(sizes.values())
    quota = {t: n_batches * s / total for t, s in sizes.items()}
    alloc = {t: int(q) for t, q in quota.items()}
    for t in sorted(quota, key=lambda t: quota[t] - alloc[t], reverse=True)[: n_batches - sum(alloc.values())]:
        alloc[t] += 1
    return {t: n for t, n in alloc.items() if n > 0}


def fixed_train_sets(env: Env, tasks: list[str], n_batches: int, seed: int) -> dict:
    """task -> TrainSet holding exactly (its share of) n_batches * BATCH examples drawn from the config's
    capped training set: one pass over them is exactly n_batches full single-task batches."""
    from mtkd.loop import TrainSet

    full = {t: env.ctx.train_set(t) for t in tasks}
    alloc = allocate_batches({t: len(s.indices) for t, s in full.items()}, n_batches) if len(tasks) > 1 else {tasks[0]: n_batches}
    return {t: TrainSet(full[t].data, subset(full[t].indices, k * BATCH, seed * 1009 + i))
            for i, (t, k) in enumerate(alloc.items())}


def mtl_tasks(env: Env) -> list[str]:
    return env.ctx.train_tasks()


def hf_features(batches: list[tuple[object, np.ndarray]], pad_to: int | None, num_labels: int) -> list[dict]:
    """The examples of `batches` [(EncodedSplit, indices)], in that order, as a list of feature dicts
    for Trainer (python lists, as run_glue's `datasets.map` produces). pad_to=128: run_glue's default
    padding='max_length'. Labels: the class index; regression labels (STS-B, MTL mix only) become 0,
    out-of-range classes are folded with `% num_labels` (label values do not change the cost)."""
    feats = []
    for d, idx in batches:
        regression = d.labels is not None and d.labels.dtype.kind == "f"
        for i in idx:
            s, e = int(d.offsets[i]), int(d.offsets[i + 1])
            ids = d.input_ids[s:e].tolist()
            types = d.token_type_ids[s:e].tolist()
            mask = [1] * len(ids)
            if pad_to is not None:
                k = pad_to - len(ids)
                ids, types, mask = ids + [0] * k, types + [0] * k, mask + [0] * k
            y = 0 if regression else int(d.labels[i]) % num_labels
            feats.append({"input_ids": ids, "token_type_ids": types, "attention_mask": mask, "labels": y})
    return feats


# ------------------------------------------------------------------------------------ contenders
def mtkd_cfg(env: Env, steps: int):
    """The config's MTL settings (Adamax, lr 2e-4, clip 1.0, bucket 50, warm-up 0.1), max_steps=steps."""
    return dataclasses.replace(env.ctx.cfg.mtl, batch_size=BATCH, lr=LR, max_steps=steps, checkpoint_every=10 ** 9)


def mtkd_batches(env: Env, train_sets: dict, seed: int) -> list[tuple[str, np.ndarray]]:
    """The batches (task, indices), in order, that mtkd.loop.train will draw in its first epoch over
    `train_sets` with this seed: the loop's own sampler built with the loop's arguments. (Checked
    against what the loop actually ran: bench_train compares the step shapes.)"""
    from mtkd.loop import make_sampler

    steps = sum(len(s.indices) // BATCH for s in train_sets.values())
    return make_sampler(train_sets, mtkd_cfg(env, steps), seed).epoch_batches(0)


def run_mtkd(env: Env, train_sets: dict, seed: int, loss_fn_factory=None, model=None) -> dict:
    """One call of mtkd's own training loop (mtkd.loop.train, unmodified) over one pass of
    `train_sets`, timed by a StepClock, with the config's MTL settings and max_steps = the number of
    batches."""
    from mtkd.loop import train

    steps = sum(len(s.indices) // BATCH for s in train_sets.values())
    model = model if model is not None else env.ctx.new_model()
    cfg = mtkd_cfg(env, steps)
    run_dir = Path(tempfile.mkdtemp(prefix="mtkd-run-", dir=env.work))
    loss_fn = loss_fn_factory(model) if loss_fn_factory else None
    try:
        with StepClock(model) as clock:
            summary = train(model, train_sets, cfg, seed, run_dir, env.ctx.accelerator, loss_fn=loss_fn, desc="bench")
        res = clock.result(expect_steps=steps)
        res["loop_reported_seconds"] = float(summary["seconds"])
        return res
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        del model
        gc.collect()


def _training_args(out_dir: Path, steps: int, seed: int, sampling: str):
    import inspect

    from transformers import TrainingArguments

    params = inspect.signature(TrainingArguments.__init__).parameters
    kw = dict(output_dir=str(out_dir), per_device_train_batch_size=BATCH, max_steps=steps, learning_rate=LR,
              weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="linear", warmup_steps=int(0.1 * steps),
              seed=seed, data_seed=seed, save_strategy="no", report_to="none", dataloader_num_workers=0,
              fp16=False, bf16=False, disable_tqdm=False)
    if "use_cpu" in params:
        kw["use_cpu"] = True
    if sampling != "random":
        if "train_sampling_strategy" in params:  # transformers >= 5 (group_by_length=True is 'group_by_length')
            kw["train_sampling_strategy"] = sampling
        elif sampling == "group_by_length":
            kw["group_by_length"] = True
        else:
            raise RuntimeError(f"this transformers version has no train_sampling_strategy={sampling!r}")
    return TrainingArguments(**kw)


def run_trainer(env: Env, features: list[dict], steps: int, seed: int, dynamic: bool, num_labels: int,
                sampling: str = "random") -> dict:
    """One Hugging Face Trainer run of `steps` steps over `features` (one pass), timed the same way.
    dynamic=False: run_glue defaults (features pre-padded to 128, default_data_collator).
    dynamic=True: DataCollatorWithPadding. sampling: 'random' (run_glue), 'sequential' (features
    in the given batch order) or 'group_by_length'. Optimizer: Adamax lr 2e-4 (passed in)."""
    import torch
    from transformers import (AutoModelForSequenceClassification, DataCollatorWithPadding, Trainer,
                              default_data_collator)

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_pretrained(env.encoder, num_labels=num_labels)
    run_dir = Path(tempfile.mkdtemp(prefix="hf-run-", dir=env.work))
    tok = env.ctx.tokenizer()
    optimizer = torch.optim.Adamax(model.parameters(), lr=LR, weight_decay=0.0)
    trainer = Trainer(model=model, args=_training_args(run_dir, steps, seed, sampling), train_dataset=features,
                      data_collator=DataCollatorWithPadding(tok) if dynamic else default_data_collator,
                      processing_class=tok, optimizers=(optimizer, None))
    try:
        with StepClock(model) as clock:
            trainer.train()
        return clock.result(expect_steps=steps)
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)
        del trainer, model, optimizer
        gc.collect()


# -------------------------------------------------------------------------------------- reporting
def fmt(x, digits=3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}"
    return str(x)


def md_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def mmm(s: dict) -> str:
    """'median (min-max)'."""
    return f"{fmt(s['median'])} ({fmt(s['min'])}-{fmt(s['max'])})"


def ratio_table(ratios: dict[str, dict], what: dict[str, str] | None = None) -> str:
    rows = []
    for key, s in ratios.items():
        t = target_for(key)
        if t is None or s["median"] is None:
            met = "-"
        else:
            met = "yes" if (s["median"] >= t[1] if t[0] == ">=" else s["median"] <= t[1]) else "NO"
        rows.append([key, (what or {}).get(key, ""), mmm(s), f"{t[0]} {t[1]}" if t else "-", met])
    return md_table(["ratio", "what", "median (min-max)", "target", "met"], rows)


def _finite(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    return obj


def write_json(out_dir: Path, name: str, payload: dict) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_finite(payload), indent=1))
    tmp.replace(path)
    return path


def payload(env: Env, name: str, settings: dict, contenders: dict, ratios: dict, tables: list[str],
            what: dict | None = None, **extra) -> dict:
    """The JSON document of one benchmark: every measured number, plus `ratios` (key -> median) and
    `ratio_stats` (key -> median/min/max/values) and the targets."""
    return {
        "benchmark": name, "mode": env.mode.name, "machine": machine_info(), "encoder": env.encoder_label,
        "encoder_path": env.encoder, "config": str(CONFIG.relative_to(REPO)), "data_root": str(env.data_root),
        "settings": {"mode": dataclasses.asdict(env.mode), **settings},
        "contenders": contenders,
        "ratios": {k: v["median"] for k, v in ratios.items()},
        "ratio_stats": ratios,
        "ratio_what": {k: (what or {}).get(k, "") for k in ratios},
        "targets": {k: list(target_for(k)) for k in ratios if target_for(k)},
        **extra,
        "tables": tables,
    }


def standalone(name: str, run: Callable) -> None:
    """`python benchmarks/bench_X.py [--quick|--full|--smoke] [--out DIR]`: run one benchmark."""
    p = argparse.ArgumentParser(description=f"mtkd benchmark: {name}")
    add_common_args(p)
    args = p.parse_args()
    env = make_env(args)
    try:
        doc = run(env)
        print(f"wrote {write_json(env.out_dir, name, doc)}")
    finally:
        close_env(env)
