"""The suite's settings and set-up: paths, modes (smoke / quick / full), the environment every
benchmark of `run_all.py` shares (encoder, config, data, threads), the command line, and the JSON
document of one benchmark. Method and caveats: benchmarks/README.md.

Every benchmark script of the suite has `run(env) -> document`; `run_all.py` calls them in one
process, or a script runs alone (`python benchmarks/bench_train.py --quick`, see `standalone`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from machine import machine_info, warn_if_busy
from reporting import target_for, write_json

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "configs" / "glue-cpu.yaml"
DEFAULT_OUT = REPO / "results" / "bench"
BATCH = 32
LR = 2e-4


def hf_env_defaults() -> None:
    """No hub look-ups, and no tokenizer threads competing with the timed ones (unless the caller's
    environment says otherwise). Set on import, before transformers is: every script imports this."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


hf_env_defaults()


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


# ------------------------------------------------------------------------------------ environment
@dataclass
class Env:
    mode: Mode
    out_dir: Path
    encoder: str  # folder of the encoder (HF layout, tokenizer included)
    encoder_label: str
    cfg: object  # configs/glue-cpu.yaml with the benchmark's overrides (mtkd.config.RunConfig)
    data: object  # its tasks and data (mtkd.task_data.TaskData)
    accelerator: object
    work: Path  # scratch folder (run folders, tiny encoder), removed at the end
    data_root: Path
    threads: int
    overrides: list

    def new_model(self, dropout: float | None = None):
        """A fresh MT-DNN on the config's encoder (`dropout`: its shared-layer dropout)."""
        from mtkd.model import new_model

        return new_model(self.cfg.encoder, self.data.specs, self.accelerator.device, dropout=dropout)


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


def _mode_of(args) -> Mode:
    """The mode asked for, with --repeats / --steps applied."""
    mode = MODES[args.mode]
    if getattr(args, "repeats", None):
        mode = dataclasses.replace(mode, repeats=args.repeats)
    if getattr(args, "steps", None):
        mode = dataclasses.replace(mode, train_steps=args.steps, distill_steps=args.steps, flops_steps=args.steps)
    return mode


def _encoder_of(args, mode: Mode, work: Path) -> tuple[str, str]:
    """(encoder folder, its label): --encoder, else a tiny random one (smoke), else the default."""
    from mtkd.encoders import resolve_encoder
    from mtkd.testing import save_tiny_encoder

    if getattr(args, "encoder", None):
        return str(Path(args.encoder).resolve()), str(args.encoder)
    if mode.name == "smoke":
        return str(save_tiny_encoder(work / "tiny-encoder")), "tiny random BERT (2 layers, hidden 64)"
    return resolve_encoder("default"), "default (all-MiniLM-L6-v2)"


def make_env(args) -> Env:
    import torch

    from mtkd.config import load_config
    from mtkd.loop import make_accelerator
    from mtkd.task_data import TaskData

    quiet_hf()
    mode = _mode_of(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="mtkd-bench-"))
    encoder, label = _encoder_of(args, mode, work)
    data_root = Path(args.data_root).expanduser().resolve() if args.data_root else default_data_root()
    overrides = [f"encoder.name={encoder}", f"data.root={data_root}", "mtl.precision=fp32", "finetune.precision=fp32"]
    if args.cache_dir:
        overrides.append(f"data.cache_dir={Path(args.cache_dir).expanduser().resolve()}")
    cfg = load_config(CONFIG, overrides)
    warn_if_busy(mode.name)
    out_dir = Path(args.out) if args.out else DEFAULT_OUT
    return Env(mode, out_dir, encoder, label, cfg, TaskData(cfg), make_accelerator(), work, data_root,
               torch.get_num_threads(), overrides)


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


# ------------------------------------------------------------------------------------ the document
def bench_document(env: Env, name: str, settings: dict, contenders: dict, ratios: dict, tables: list[str],
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
