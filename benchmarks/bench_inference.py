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

from common import interleave, md_table, mmm, paired_ratio, payload, ratio_table, standalone, subset, summarize

NAME = "inference"
GEN_TASK = "MNLI"
KEYS = ["examples_per_s", "tokens_per_s", "seconds", "examples", "tokens"]


def _sorted_batches(data, idx, batch_size):
    from mtkd.data import collate

    order = np.argsort(data.lengths[idx], kind="stable")
    return [collate(data, idx[order[i:i + batch_size]]) for i in range(0, len(idx), batch_size)]


def run(env) -> dict:
    from transformers import AutoModelForSequenceClassification

    from mtkd.loop import predict_logits

    m = env.mode
    ctx = env.ctx
    max_len = ctx.cfg.data.max_seq_len
    data = ctx.train_set(GEN_TASK).data
    pool = ctx.train_set(GEN_TASK).indices
    n_labels = ctx.specs[GEN_TASK].num_outputs

    # ---------------------------------------------------------------- 1. soft-target generation
    student = ctx.new_model()
    student.eval()
    hf = AutoModelForSequenceClassification.from_pretrained(env.encoder, num_labels=n_labels)
    hf.eval()

    def gen_idx(r, n=None):
        return subset(pool, n or (m.infer_examples if r >= 0 else max(64, m.infer_examples // 4)), seed=3000 + r)

    def mtkd_gen(r):
        idx = gen_idx(r)
        t0 = time.perf_counter()
        out = predict_logits(student, data, GEN_TASK, indices=idx, batch_size=ctx.cfg.predict.batch_size,
                             max_tokens=ctx.cfg.predict.max_tokens)
        dt = time.perf_counter() - t0
        assert out.shape == (len(idx), n_labels)
        tok = int(data.lengths[idx].sum())
        return {"examples": len(idx), "tokens": tok, "seconds": dt, "examples_per_s": len(idx) / dt, "tokens_per_s": tok / dt}

    def hf_padded(r):
        from mtkd.data import collate

        idx = gen_idx(r)
        batches = []
        for i in range(0, len(idx), 64):
            b = collate(data, idx[i:i + 64])
            pad = max_len - b["input_ids"].shape[1]
            batches.append({k: torch.nn.functional.pad(b[k], (0, pad)) for k in ("input_ids", "attention_mask", "token_type_ids")})
        outs = []
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                outs.append(hf(**b).logits.float().numpy())
        dt = time.perf_counter() - t0
        tok = int(data.lengths[idx].sum())
        return {"examples": len(idx), "tokens": tok, "seconds": dt, "examples_per_s": len(idx) / dt, "tokens_per_s": tok / dt}

    gen_runs = interleave([("mtkd_predict_logits_sorted", mtkd_gen), ("hf_forward_b64_padded128", hf_padded)],
                          m.repeats, warmup=m.warmup_round, label=NAME)
    del hf

    # ------------------------------------------------------------ 2. all heads vs per-task models
    head_tasks = [t for t, s in ctx.specs.items() if s.head_of is None]
    per_task = [copy.deepcopy(student) for _ in head_tasks]

    def head_batches(r):
        return _sorted_batches(data, subset(pool, m.heads_examples if r >= 0 else 64, seed=4000 + r), 128)

    def count(batches):
        return sum(len(b["index"]) for b in batches), sum(int(b["attention_mask"].sum()) for b in batches)

    def one_pass(r):
        batches = head_batches(r)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                cls = student.encode(b["input_ids"], b["attention_mask"], b["token_type_ids"])
                for logits in student.head_logits(cls, head_tasks).values():
                    logits.float().numpy()
        dt = time.perf_counter() - t0
        n, tok = count(batches)
        return {"examples": n, "tokens": tok, "seconds": dt, "examples_per_s": n / dt, "tokens_per_s": tok / dt}

    def per_task_models(r):
        batches = head_batches(r)
        t0 = time.perf_counter()
        with torch.inference_mode():
            for b in batches:
                for t, model in zip(head_tasks, per_task):
                    model(b["input_ids"], b["attention_mask"], b["token_type_ids"], task=t).float().numpy()
        dt = time.perf_counter() - t0
        n, tok = count(batches)
        return {"examples": n, "tokens": tok, "seconds": dt, "examples_per_s": n / dt, "tokens_per_s": tok / dt}

    head_runs = interleave([("all_heads_one_encoder_pass", one_pass), (f"per_task_models_x{len(head_tasks)}", per_task_models)],
                           m.repeats, warmup=m.warmup_round, label=NAME)
    del per_task, student

    runs = {**gen_runs, **head_runs}
    ratios = {
        "softtarget_gen_vs_padded_forward": paired_ratio(gen_runs["mtkd_predict_logits_sorted"], gen_runs["hf_forward_b64_padded128"]),
        "all_heads_one_pass_vs_per_task_models": paired_ratio(head_runs["all_heads_one_encoder_pass"],
                                                              head_runs[f"per_task_models_x{len(head_tasks)}"]),
    }
    what = {"softtarget_gen_vs_padded_forward": f"predict_logits / HF padded forward ({GEN_TASK} train)",
            "all_heads_one_pass_vs_per_task_models": f"{len(head_tasks)} heads on one encode / {len(head_tasks)} models"}
    summ = {name: summarize(rs, KEYS) for name, rs in runs.items()}
    rows = [[name, mmm(s["examples_per_s"]), mmm(s["tokens_per_s"]), mmm(s["seconds"])] for name, s in summ.items()]
    t1 = md_table(["contender", "examples/s", "tokens/s (real)", "timed s"], rows)
    t2 = ratio_table(ratios, what)
    title = (f"## Inference ({env.encoder_label}; soft targets on {m.infer_examples} {GEN_TASK} examples, "
             f"all heads on {m.heads_examples}; {m.repeats} rounds interleaved)")
    print(f"\n{title}\n\n{t1}\n\n{t2}\n", flush=True)
    settings = {"softtarget_task": GEN_TASK, "softtarget_examples": m.infer_examples, "mtkd_batch_size": ctx.cfg.predict.batch_size,
                "mtkd_max_tokens": ctx.cfg.predict.max_tokens,
                "hf_batch_size": 64, "hf_padding": f"max_length {max_len}", "heads_examples": m.heads_examples,
                "head_tasks": head_tasks, "heads_batch_size": 128, "rounds": m.repeats,
                "grad_mode": "torch.inference_mode for every contender"}
    return payload(env, NAME, settings, summ, ratios, [title, t1, t2], what=what)


if __name__ == "__main__":
    standalone(NAME, run)
