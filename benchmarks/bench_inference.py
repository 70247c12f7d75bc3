"""Inference: soft-target generation and serving every task head.

1. Soft-target generation (a teacher's pass over a training set; MNLI train, the largest teacher
   task): `mtkd.loop.predict_logits` with the config's `predict` settings (examples sorted by
   length, dynamic padding, batches of up to 128 examples and 8192 padded tokens, from the tokenised
   cache) against a plain Hugging Face forward pass (AutoModelForSequenceClassification, eval,
   inference_mode) over the same examples in dataset order, batch 64, padded to max length 128 as
   run_glue tokenises (the padded batches are built before timing: the HF side is timed on the model
   alone, mtkd's side includes its collation).
2. All heads from one encoder pass (`MTModel.encode` once, then `MTModel.head_logits` for every head of
   configs/glue-cpu.yaml) against one model per task (one MTModel copy per head, each running its own
   encoder pass). Both get the same length-sorted, dynamically padded batches of 128, built before
   timing, and both convert every head's logits to numpy.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch

from reporting import md_table, median_range, ratio_table
from suite import bench_document, standalone
from timing import interleave, paired_ratio, summarize
from train_subsets import subset

NAME = "inference"
GEN_TASK = "MNLI"
HF_BATCH = 64
HEADS_BATCH = 128
KEYS = ["examples_per_s", "tokens_per_s", "seconds", "examples", "tokens"]


def _sorted_batches(data, idx, batch_size):
    from mtkd.data import collate

    order = np.argsort(data.lengths[idx], kind="stable")
    return [collate(data, idx[order[i:i + batch_size]]) for i in range(0, len(idx), batch_size)]


def _throughput(examples: int, tokens: int, seconds: float) -> dict:
    return {"examples": examples, "tokens": tokens, "seconds": seconds, "examples_per_s": examples / seconds,
            "tokens_per_s": tokens / seconds}


def soft_target_generation(env, student) -> dict[str, list[dict]]:
    """Part 1: predict_logits over a seeded subset of MNLI train against HF's padded forward."""
    from transformers import AutoModelForSequenceClassification

    from mtkd.data import collate
    from mtkd.loop import predict_logits

    mode, cfg = env.mode, env.cfg
    data, pool = env.data.train_set(GEN_TASK).data, env.data.train_set(GEN_TASK).indices
    n_labels = env.data.specs[GEN_TASK].num_outputs
    hf = AutoModelForSequenceClassification.from_pretrained(env.encoder, num_labels=n_labels)
    hf.eval()

    def gen_idx(r):
        return subset(pool, mode.infer_examples if r >= 0 else max(64, mode.infer_examples // 4), seed=3000 + r)

    def mtkd_gen(r):
        idx = gen_idx(r)
        t0 = time.perf_counter()
        out = predict_logits(student, data, GEN_TASK, indices=idx, batch_size=cfg.predict.batch_size,
                             max_tokens=cfg.predict.max_tokens)
        dt = time.perf_counter() - t0
        assert out.shape == (len(idx), n_labels)
        return _throughput(len(idx), int(data.lengths[idx].sum()), dt)

    def hf_padded(r):
        idx = gen_idx(r)
        batches = []  # built before the clock starts: the HF side is timed on the model alone
        for i in range(0, len(idx), HF_BATCH):
            b = collate(data, idx[i:i + HF_BATCH])
            pad = cfg.data.max_seq_len - b["input_ids"].shape[1]
            batches.append({k: torch.nn.functional.pad(b[k], (0, pad)) for k in ("input_ids", "attention_mask", "token_type_ids")})
        outs = []
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                outs.append(hf(**b).logits.float().numpy())
        dt = time.perf_counter() - t0
        return _throughput(len(idx), int(data.lengths[idx].sum()), dt)

    return interleave([("mtkd_predict_logits_sorted", mtkd_gen), ("hf_forward_b64_padded128", hf_padded)],
                      mode.repeats, warmup=mode.warmup_round, label=NAME)


def all_heads(env, student, head_tasks: list[str]) -> dict[str, list[dict]]:
    """Part 2: one encoder pass + every head against one model copy per head."""
    mode = env.mode
    data, pool = env.data.train_set(GEN_TASK).data, env.data.train_set(GEN_TASK).indices
    per_task = [copy.deepcopy(student) for _ in head_tasks]

    def head_batches(r):
        return _sorted_batches(data, subset(pool, mode.heads_examples if r >= 0 else 64, seed=4000 + r), HEADS_BATCH)

    def counted(batches, seconds):
        return _throughput(sum(len(b["index"]) for b in batches), sum(int(b["attention_mask"].sum()) for b in batches),
                           seconds)

    def one_pass(r):
        batches = head_batches(r)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                cls = student.encode(b["input_ids"], b["attention_mask"], b["token_type_ids"])
                for logits in student.head_logits(cls, head_tasks).values():
                    logits.float().numpy()
        return counted(batches, time.perf_counter() - t0)

    def per_task_models(r):
        batches = head_batches(r)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                for t, model in zip(head_tasks, per_task):
                    model(b["input_ids"], b["attention_mask"], b["token_type_ids"], task=t).float().numpy()
        return counted(batches, time.perf_counter() - t0)

    return interleave([("all_heads_one_encoder_pass", one_pass), (f"per_task_models_x{len(head_tasks)}", per_task_models)],
                      mode.repeats, warmup=mode.warmup_round, label=NAME)


def run(env) -> dict:
    mode, cfg = env.mode, env.cfg
    student = env.new_model()
    student.eval()
    gen_runs = soft_target_generation(env, student)
    head_tasks = [t for t, s in env.data.specs.items() if s.head_of is None]
    head_runs = all_heads(env, student, head_tasks)
    del student

    runs = {**gen_runs, **head_runs}
    ratios = {
        "softtarget_gen_vs_padded_forward": paired_ratio(gen_runs["mtkd_predict_logits_sorted"], gen_runs["hf_forward_b64_padded128"]),
        "all_heads_one_pass_vs_per_task_models": paired_ratio(head_runs["all_heads_one_encoder_pass"],
                                                              head_runs[f"per_task_models_x{len(head_tasks)}"]),
    }
    what = {"softtarget_gen_vs_padded_forward": f"predict_logits / HF padded forward ({GEN_TASK} train)",
            "all_heads_one_pass_vs_per_task_models": f"{len(head_tasks)} heads on one encode / {len(head_tasks)} models"}
    summaries = {name: summarize(rs, KEYS) for name, rs in runs.items()}
    rows = [[name, median_range(s["examples_per_s"]), median_range(s["tokens_per_s"]), median_range(s["seconds"])]
            for name, s in summaries.items()]
    t1 = md_table(["contender", "examples/s", "tokens/s (real)", "timed s"], rows)
    t2 = ratio_table(ratios, what)
    title = (f"## Inference ({env.encoder_label}; soft targets on {mode.infer_examples} {GEN_TASK} examples, "
             f"all heads on {mode.heads_examples}; {mode.repeats} rounds interleaved)")
    print(f"\n{title}\n\n{t1}\n\n{t2}\n", flush=True)
    settings = {"softtarget_task": GEN_TASK, "softtarget_examples": mode.infer_examples,
                "mtkd_batch_size": cfg.predict.batch_size, "mtkd_max_tokens": cfg.predict.max_tokens,
                "hf_batch_size": HF_BATCH, "hf_padding": f"max_length {cfg.data.max_seq_len}",
                "heads_examples": mode.heads_examples, "head_tasks": head_tasks, "heads_batch_size": HEADS_BATCH,
                "rounds": mode.repeats, "grad_mode": "torch.inference_mode for every contender"}
    return bench_document(env, NAME, settings, summaries, ratios, [title, t1, t2], what=what)


if __name__ == "__main__":
    standalone(NAME, run)
