"""How long `mtkd run configs/glue-kd-gpu.yaml` should take on one H100, estimated without one.

What is counted exactly (from the config and the real data, with mtkd's own sampler and batching):
every training step of every stage (single-task, MTL, fine-tune, 4 teacher candidates, 3 members'
fine-tunes, student MTL + fine-tune) with its padded batch shape, every inference batch (candidate
selection, soft targets, dev evaluation), and every checkpoint and model save.

What is measured here, on the CPU, because it costs the same on a GPU machine's host:
- tokenising every split (cold cache);
- the host time of one training step and of one inference batch: the default encoder's exact
  architecture (6 layers, 12 heads, PyTorch dropout + SDPA as on a GPU, bf16 autocast, foreach
  Adamax and clipping as CUDA defaults to) shrunk to a tiny width, so that the kernels cost ~nothing
  and what is left is Python, the dispatcher and autocast: on a GPU these run on the host while the
  kernels are launched, and for a model this small they, not the GPU, set the step time;
- writing a checkpoint and a model folder of the real (full-size) model.

What is assumed (stated in the output, change with the flags): the GPU's sustained bf16 throughput on
these small matmuls (hidden 384) and the host cost of one CUDA kernel launch. The loop syncs once per
step (the loss value for logging and the divergence check), so GPU time and host time are added, not
overlapped: an upper bound.

    python benchmarks/estimate_gpu_time.py [--config configs/glue-kd-gpu.yaml] [--tflops 150] [--launch-us 4]

Prints a table per stage and the total; writes results/bench/gpu_estimate.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from machine import machine_info
from reporting import md_table
from suite import REPO, quiet_hf, use_torch_dropout

# The host-time batch: tiny, because the attention tensors (batch x 12 heads x L x L) do not shrink with
# the width; the number of kernels, which is what costs host time, does not depend on the shape.
HOST_BATCH_SHAPE = (4, 16)


# ------------------------------------------------------------------------------------------ counting
def model_flops(config) -> tuple[float, float]:
    """(forward FLOPs per token excluding attention scores, forward attention FLOPs per token per unit
    of sequence length) of a BERT-style encoder: 2 x the layers' weights, and 4 L d per layer."""
    d, i, n = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    weights = n * (4 * d * d + 2 * d * i)
    return 2.0 * weights, 4.0 * d * n


def _sampler(data, tasks: list[str], cfg, seed: int):
    """The training loop's own batch sampler (mtkd.loop.make_sampler) for these tasks and settings."""
    from mtkd.loop import make_sampler

    sets = {t: data.train_set(t) for t in tasks}
    return sets, make_sampler(sets, cfg, seed)


def train_batches(data, tasks: list[str], cfg, seed: int, pad: int) -> list[tuple[str, int, int]]:
    """One epoch of (task, rows, padded width) as the training loop batches it."""
    sets, sampler = _sampler(data, tasks, cfg, seed)
    return [(task, len(idx), -(-int(sets[task].data.lengths[idx].max()) // pad) * pad) for task, idx, _ in sampler]


def collate_ms(data, cfg, seed: int, n: int = 300) -> float:
    """Median host time of building one training batch (mtkd.data.collate) over the MTL epoch's first n."""
    from mtkd.data import collate

    sets, sampler = _sampler(data, data.train_tasks(), cfg, seed)
    ts = []
    for i, (task, idx, _) in enumerate(sampler):
        if i == n:
            break
        t0 = time.perf_counter()
        collate(sets[task].data, idx, pad_multiple=8)
        ts.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ts)


def infer_batches(data, task: str, split, indices) -> list[tuple[str, int, int]]:
    from mtkd.inference import length_batches

    lens = split.lengths[indices]
    return [(task, len(sel), int(lens[sel].max()))
            for sel in length_batches(lens, data.cfg.predict.batch_size, data.cfg.predict.max_tokens)]


def plan(data, seed: int, pad: int) -> list[dict]:
    """Every stage of the KD experiment: its training runs (batches x epochs), inference batches, saves."""
    from mtkd.loop import total_steps

    cfg, kd = data.cfg, data.cfg.kd
    tasks = cfg.finetune_tasks or data.train_tasks()

    def training_run(task_list, cfg_):
        batches = train_batches(data, task_list, cfg_, seed, pad)
        steps = total_steps(cfg_, len(batches))
        return {"batches": batches, "epochs": cfg_.epochs, "steps": steps,
                "checkpoints": steps // cfg_.checkpoint_every + math.ceil(cfg_.epochs)}

    def finetunes(task_list, cfg_):  # one run per task
        return [training_run([t], cfg_) for t in task_list]

    mtl_run = training_run(data.train_tasks(), cfg.mtl)

    def dev_batches(task_list):
        return [b for t in task_list for split, idx in data.dev_sets(t).values()
                for b in infer_batches(data, t, split, idx)]

    n_cand = len(kd.seeded_candidates(seed))
    teacher_infer = []
    for t in kd.teacher_tasks:  # each member labels the task's training set and its dev set
        ts = data.train_set(t)
        teacher_infer += kd.top_k * (infer_batches(data, t, ts.data, ts.indices) + dev_batches([t]))
    return [
        {"stage": "single_task", "train": finetunes(tasks, cfg.mtl), "infer": dev_batches(tasks)},
        {"stage": "mtl", "train": [mtl_run], "infer": []},
        {"stage": "finetune", "train": finetunes(tasks, cfg.finetune), "infer": dev_batches(tasks)},
        {"stage": "teach", "train": [mtl_run] * n_cand
         + finetunes(list(kd.teacher_tasks), cfg.finetune) * kd.top_k,
         "infer": dev_batches(kd.select_by or kd.teacher_tasks) * n_cand + teacher_infer},
        {"stage": "distill", "train": [mtl_run] + finetunes(tasks, cfg.finetune),
         "infer": dev_batches(tasks)},
    ]


# ------------------------------------------------------------------------------------------ measuring
def tiny_twin(data):
    """The default encoder's architecture at hidden 48 (12 heads of 4), PyTorch dropout + SDPA."""
    from transformers import AutoConfig

    from mtkd.encoders import load_encoder, resolve_encoder
    from mtkd.model import MTModel

    path = resolve_encoder(data.cfg.encoder.name)
    full = AutoConfig.from_pretrained(path)
    tiny = AutoConfig.from_pretrained(path, hidden_size=4 * full.num_attention_heads, intermediate_size=8 * full.num_attention_heads)
    model = use_torch_dropout(MTModel(load_encoder(tiny, None), data.specs, None, encoder_name="tiny-twin"))
    return model, full


# operators that only make views or allocate: no kernel on a GPU
NO_KERNEL = {"aten::empty", "aten::empty_strided", "aten::empty_like", "aten::as_strided", "aten::view",
             "aten::_unsafe_view", "aten::_reshape_alias", "aten::reshape", "aten::resolve_conj", "aten::resolve_neg",
             "aten::expand", "aten::transpose", "aten::permute", "aten::t", "aten::unsqueeze", "aten::squeeze",
             "aten::slice", "aten::select", "aten::detach", "aten::alias", "aten::lift_fresh", "aten::split",
             "aten::unbind", "aten::chunk", "aten::_local_scalar_dense", "aten::item", "aten::is_nonzero",
             "aten::result_type", "aten::set_", "aten::to", "aten::_to_copy", "aten::contiguous"}
MULTI_TENSOR_CHUNK = 48  # tensors per launch of a CUDA foreach kernel with 3-4 tensor lists


def median_ms(fn, steps: int, before=None) -> float:
    """Median ms of `steps` calls of fn after 3 untimed ones; `before` runs untimed before each call."""
    for _ in range(3):
        before and before()
        fn()
    ts = []
    for _ in range(steps):
        before and before()
        t0 = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t0) * 1000)
    return statistics.median(ts)


def count_kernels(fn, before=None, foreach_chunks: int = 1) -> int:
    """GPU kernels one call of fn would launch: the profiler's leaf aten operators that do work (not
    NO_KERNEL), each foreach operator counted as `foreach_chunks` launches and its children not at all."""
    from torch.profiler import ProfilerActivity, profile

    before and before()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = prof.events()
    top_foreach = sum(1 for e in events if e.name.startswith("aten::_foreach_") and not _under_foreach(e))
    leaf = sum(1 for e in events if e.name.startswith("aten::") and not e.cpu_children and e.name not in NO_KERNEL
               and not _under_foreach(e) and not e.name.startswith("aten::_foreach_"))
    return leaf + top_foreach * foreach_chunks


def host_times(model, task: str, steps: int) -> dict:
    """Host time (ms, median) of the tiny twin's training step, split into forward + backward (the
    same operators a GPU runs, one kernel each) and clip + Adamax (on the CPU a per-tensor loop, on a
    GPU a few multi-tensor kernels: the CPU time is an upper bound), and of an inference batch; and
    the number of GPU kernels each launches."""
    from mtkd.loop import default_loss

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adamax(params, lr=1e-5, foreach=True)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 2000, HOST_BATCH_SHAPE, generator=g)
    mask, types = torch.ones_like(ids), torch.zeros_like(ids)
    batch = {"labels": torch.randint(0, 2, HOST_BATCH_SHAPE[:1], generator=g)}
    loss_fn = default_loss(model)

    def forward_backward():
        model.train()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(ids, mask, types, task=task)
        loss = loss_fn(task, logits.float(), batch).mean()
        float(loss.detach())  # the loop's per-step sync
        loss.backward()

    def clip_and_update():
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    @torch.inference_mode()
    def infer_batch():
        model.eval()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            model(ids, mask, types, task=task).float().numpy()

    def zero_grad():
        optimizer.zero_grad(set_to_none=True)

    out = {"forward_backward_ms": median_ms(forward_backward, steps, before=zero_grad),
           "clip_adamax_ms": median_ms(clip_and_update, steps, before=forward_backward),
           "infer_batch_ms": median_ms(infer_batch, steps),
           "param_tensors": len(params)}
    out["forward_backward_kernels"] = count_kernels(forward_backward, before=zero_grad)
    out["clip_adamax_kernels"] = count_kernels(clip_and_update, before=forward_backward,
                                               foreach_chunks=math.ceil(len(params) / MULTI_TENSOR_CHUNK))
    out["infer_batch_kernels"] = count_kernels(infer_batch)
    return out


def _under_foreach(e) -> bool:
    parent = e.cpu_parent
    while parent is not None:
        if parent.name.startswith("aten::_foreach_"):
            return True
        parent = parent.cpu_parent
    return False


def save_times(data, folder: Path) -> dict:
    """Seconds to write one training checkpoint (model + Adamax state) and one model folder, full size."""
    from mtkd.checkpoint import save_checkpoint
    from mtkd.loop import make_accelerator
    from mtkd.model import new_model

    model = new_model(data.cfg.encoder, data.specs, make_accelerator().device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adamax(params, lr=1e-5)
    for p in params:  # an optimizer state of the real size
        p.grad = torch.zeros_like(p)
    optimizer.step()
    t0 = time.perf_counter()
    save_checkpoint(folder / "ckpt", model, optimizer, {"step": 1})
    t1 = time.perf_counter()
    model.save_pretrained(folder / "model")
    t2 = time.perf_counter()
    return {"checkpoint_s": t1 - t0, "save_model_s": t2 - t1}


# ------------------------------------------------------------------------------------------ main
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", type=Path, default=REPO / "configs" / "glue-kd-gpu.yaml")
    ap.add_argument("--tflops", type=float, default=150.0,
                    help="assumed sustained bf16 TFLOP/s of the GPU on these shapes (H100 SXM peak: 989 dense)")
    ap.add_argument("--launch-us", type=float, default=4.0, help="assumed host microseconds per CUDA kernel launch")
    ap.add_argument("--host-steps", type=int, default=20)
    ap.add_argument("--json", type=Path, default=REPO / "results" / "bench" / "gpu_estimate.json")
    ap.add_argument("--data-root", default=None, help="GLUE folder (default: the config's)")
    return ap.parse_args(argv)


def measure(args) -> dict:
    """Everything counted and measured here: the stages' plan, tokenising, the host costs, the saves."""
    from mtkd.config import load_config
    from mtkd.task_data import TaskData

    overrides = [f"data.root={args.data_root}"] if args.data_root else []
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config, overrides + [f"data.cache_dir={tmp}/cache"])
        data = TaskData(cfg)
        seed = cfg.seeds[0]
        t0 = time.perf_counter()
        for t, spec in data.specs.items():  # cold tokenisation of every split, as the first stage does
            for split in spec.splits:
                data.encoded(t, split)
        tokenise_s = time.perf_counter() - t0
        stages = plan(data, seed, pad=8)  # AMP pads batches to a multiple of 8
        twin, full_config = tiny_twin(data)
        host = host_times(twin, next(iter(data.train_tasks())), args.host_steps)
        host["collate_ms"] = collate_ms(data, cfg.mtl, seed)
        saves = save_times(data, Path(tmp))
    return {"tokenise_s": tokenise_s, "stages": stages, "host": host, "saves": saves, "full_config": full_config}


def host_step_seconds(host: dict, launch_us: float) -> dict:
    """bound -> (host s per training step, host s per inference batch).
    upper: the CPU's per-tensor clip + Adamax loop and `launch_us` per kernel on top of the host time;
    lower: clip + Adamax as the CUDA multi-tensor kernels only, and half the launch cost."""
    train_kernels = host["forward_backward_kernels"] + host["clip_adamax_kernels"]
    return {
        "upper": ((host["collate_ms"] + host["forward_backward_ms"] + host["clip_adamax_ms"] + train_kernels * launch_us / 1000) / 1000,
                  (host["infer_batch_ms"] + host["infer_batch_kernels"] * launch_us / 1000) / 1000),
        "lower": ((host["collate_ms"] + host["forward_backward_ms"] + train_kernels * launch_us / 2000) / 1000,
                  (host["infer_batch_ms"] + host["infer_batch_kernels"] * launch_us / 2000) / 1000),
    }


def estimate(measured: dict, flops: tuple[float, float], tflops: float, train_host_s: float, infer_host_s: float):
    """(one record per stage, total seconds with tokenising) for these host costs per step / batch."""
    flops_tok, attn_tok = flops
    saves = measured["saves"]

    def gpu_s(batches, factor):  # factor 3: forward + backward; 1: forward only
        return sum(factor * rows * width * (flops_tok + attn_tok * width) for _, rows, width in batches) / tflops

    out, total = [], measured["tokenise_s"]
    for st in measured["stages"]:
        steps = sum(r["steps"] for r in st["train"])
        # every run trains `epochs` passes over its batch list: scale one epoch's GPU time
        train_gpu = sum(gpu_s(r["batches"], 3) * r["steps"] / len(r["batches"]) for r in st["train"])
        infer_gpu = gpu_s(st["infer"], 1)
        saves_s = (sum(r["checkpoints"] for r in st["train"]) * saves["checkpoint_s"]
                   + len(st["train"]) * saves["save_model_s"])
        d = {"stage": st["stage"], "training_runs": len(st["train"]), "train_steps": steps,
             "train_examples": sum(sum(b[1] for b in r["batches"]) * r["epochs"] for r in st["train"]),
             "infer_batches": len(st["infer"]), "train_gpu_s": train_gpu, "train_host_s": steps * train_host_s,
             "infer_gpu_s": infer_gpu, "infer_host_s": len(st["infer"]) * infer_host_s, "saves_s": saves_s}
        d["seconds"] = d["train_gpu_s"] + d["train_host_s"] + d["infer_gpu_s"] + d["infer_host_s"] + saves_s
        total += d["seconds"]
        out.append(d)
    return out, total


def print_report(args, measured: dict, host_s: dict, stages: list[dict], total: float, total_lower: float) -> None:
    host, saves, tokenise_s = measured["host"], measured["saves"], measured["tokenise_s"]
    rows = [[d["stage"], d["training_runs"], d["train_steps"], d["infer_batches"], f"{d['train_gpu_s']:.0f}",
             f"{d['train_host_s']:.0f}", f"{d['infer_gpu_s'] + d['infer_host_s']:.0f}", f"{d['saves_s']:.0f}",
             f"{d['seconds'] / 60:.1f}"] for d in stages]
    rows.append(["tokenise (measured)", "", "", "", "", "", "", "", f"{tokenise_s / 60:.1f}"])
    rows.append(["**total**", "", sum(d["train_steps"] for d in stages), "", "", "", "", "", f"**{total / 60:.1f}**"])
    print(f"## Estimated time of {args.config.name} on one GPU\n")
    print(f"assumed: {args.tflops:.0f} TFLOP/s sustained bf16, {args.launch_us:.0f} us per kernel launch; measured here: "
          f"host {host['collate_ms']:.2f} ms collate, {host['forward_backward_ms']:.1f} ms forward + backward "
          f"({host['forward_backward_kernels']} kernels) and "
          f"{host['clip_adamax_ms']:.1f} ms clip + Adamax ({host['clip_adamax_kernels']} kernels) per training step, "
          f"{host['infer_batch_ms']:.1f} ms per inference batch ({host['infer_batch_kernels']} kernels); "
          f"{host_s['upper'][0] * 1000:.1f} ms per step with launches (lower bound {host_s['lower'][0] * 1000:.1f}), "
          f"checkpoint {saves['checkpoint_s']:.2f} s, model save {saves['save_model_s']:.2f} s, tokenising {tokenise_s:.0f} s\n")
    print(md_table(["stage", "training runs", "steps", "inference batches", "train GPU s", "train host s",
                    "inference s", "saves s", "minutes"], rows))
    print(f"\ntotal: {total_lower / 60:.1f}-{total / 60:.1f} minutes (lower bound - the table's upper bound)")


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_hf()
    torch.set_num_threads(2)
    measured = measure(args)
    flops = model_flops(measured["full_config"])
    tflops = args.tflops * 1e12
    host_s = host_step_seconds(measured["host"], args.launch_us)
    stages, total = estimate(measured, flops, tflops, *host_s["upper"])
    _, total_lower = estimate(measured, flops, tflops, *host_s["lower"])
    print_report(args, measured, host_s, stages, total, total_lower)
    doc = {"benchmark": "gpu_estimate", "machine": machine_info(), "config": str(args.config.relative_to(REPO))
           if args.config.is_relative_to(REPO) else str(args.config),
           "assumed": {"tflops": args.tflops, "launch_us": args.launch_us},
           "measured": {**measured["host"], **measured["saves"], "tokenise_s": measured["tokenise_s"], "host_batch_shape": list(HOST_BATCH_SHAPE)},
           "flops_per_token_forward": flops[0], "attention_flops_per_token_per_length": flops[1],
           "host_step_s": {k: {"train": v[0], "infer_batch": v[1]} for k, v in host_s.items()},
           "stages": stages, "total_s": total, "total_min": total / 60, "total_min_lower": total_lower / 60}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(doc, indent=1))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
