"""Training throughput: mtkd's own loop (`mtkd.loop.train`) against Hugging Face `Trainer`.

Workloads: SST-2 (short single sentences), MRPC (sentence pairs), and the MTL mix of
configs/glue-cpu.yaml (its nine training tasks, batches allotted in proportion to the capped
training sizes; mtkd trains it as Algorithm 1, one head per task).

Contenders, all on the same encoder, batch 32, Adamax lr 2e-4 (linear warm-up 10% then decay), grad
clip 1.0, fp32, same threads, same number of steps, and within a round exactly the same examples
(a seeded subset of steps x 32 examples of the config's capped training set, one pass):
- mtkd: `mtkd.loop.train` with the config's MTL settings (length bucketing 50, dynamic padding);
- trainer_padded: Trainer + AutoModelForSequenceClassification with run_glue's defaults (features
  padded to max length 128, default_data_collator, random sampler);
- trainer_dynamic: Trainer with DataCollatorWithPadding fed exactly mtkd's length-grouped batches, in
  mtkd's order (sequential sampler): the same padding as mtkd, so the ratio isolates the framework.
  Trainer's own group_by_length groups within megabatches of min(50, n / (4 x 32)) batches, i.e. 2 batches
  on a 10-batch subset, far worse than on a full epoch (50 batches, like mtkd's bucket 50), so on a
  subset this small it would handicap Trainer; --full also runs it as `trainer_group_by_length`
  (informative, no target).
For the MTL mix, Trainer runs the same examples as one single-task run with one 3-way head
(classification labels kept, STS-B's regression labels set to 0): Trainer has no multi-head MTL and
the encoder's work, which is what costs, is the same. A 32x128 padded step costs the same for every
task, so --quick measures Trainer-padded once per round (on SST-2) and uses it for every task's ratio;
--full measures it on each task.

Throughput = examples / seconds from the first forward to the last optimizer step of the run.
"""

from __future__ import annotations

from common import (BATCH, fixed_train_sets, hf_features, interleave, md_table, mmm, mtkd_batches, paired_ratio,
                    payload, ratio_table, run_mtkd, run_trainer, standalone, summarize)

NAME = "train"
KEYS = ["examples_per_s", "tokens_per_s", "padded_tokens_per_s", "padding_fraction", "seconds", "first_step_s",
        "steady_examples_per_s", "startup_s", "teardown_s", "steps", "examples", "tokens"]


def workloads(env) -> dict[str, tuple[list[str], int]]:
    """short name -> (tasks, num_labels of the Trainer model)."""
    return {"sst2": (["SST-2"], 2), "mrpc": (["MRPC"], 2), "mtl": (env.ctx.train_tasks(), 3)}


def run(env) -> dict:
    m = env.mode
    wl = workloads(env)
    cache: dict = {}

    def plan(key, r):
        """(train_sets, mtkd's batches in order) of workload `key` in round r (r = -1: warm-up)."""
        if (key, r) not in cache:
            steps = m.warmup_steps if r < 0 else m.train_steps
            ts = fixed_train_sets(env, wl[key][0], steps, seed=1000 + r)
            cache[(key, r)] = (ts, [(ts[t].data, idx) for t, idx in mtkd_batches(env, ts, seed=1000 + r)])
        return cache[(key, r)]

    def mtkd_fn(key):
        return lambda r: run_mtkd(env, plan(key, r)[0], seed=1000 + r)

    def trainer_fn(key, dynamic, sampling):
        def fn(r):
            _, batches = plan(key, r)
            feats = hf_features(batches, pad_to=None if dynamic else env.ctx.cfg.data.max_seq_len, num_labels=wl[key][1])
            return run_trainer(env, feats, len(batches), seed=1000 + r, dynamic=dynamic, num_labels=wl[key][1],
                               sampling=sampling)
        return fn

    contenders = []
    for key in wl:
        contenders.append((f"{key}:mtkd", mtkd_fn(key)))
        if m.padded_per_task or key == "sst2":
            contenders.append((f"{key}:trainer_padded", trainer_fn(key, dynamic=False, sampling="random")))
        contenders.append((f"{key}:trainer_dynamic", trainer_fn(key, dynamic=True, sampling="sequential")))
        if m.trainer_group_by_length:
            contenders.append((f"{key}:trainer_group_by_length", trainer_fn(key, dynamic=True, sampling="group_by_length")))
    runs = interleave(contenders, m.repeats, warmup=m.warmup_round, label=NAME)

    same_batches = {key: all(a["shapes"] == b["shapes"] for a, b in zip(runs[f"{key}:mtkd"], runs[f"{key}:trainer_dynamic"]))
                    for key in wl}
    for rs in runs.values():
        for r in rs:
            r.pop("shapes", None)

    ratios, what = {}, {}
    for key in wl:
        padded = f"{key}:trainer_padded" if m.padded_per_task else "sst2:trainer_padded"
        ratios[f"train_vs_trainer_padded_{key}"] = paired_ratio(runs[f"{key}:mtkd"], runs[padded])
        what[f"train_vs_trainer_padded_{key}"] = f"mtkd / Trainer run_glue padded-128 (on {padded.split(':')[0]})"
        ratios[f"train_vs_trainer_dynamic_{key}"] = paired_ratio(runs[f"{key}:mtkd"], runs[f"{key}:trainer_dynamic"])
        what[f"train_vs_trainer_dynamic_{key}"] = "mtkd / Trainer dynamic padding, same batches"
        if f"{key}:trainer_group_by_length" in runs:
            ratios[f"train_vs_trainer_group_by_length_{key}"] = paired_ratio(runs[f"{key}:mtkd"], runs[f"{key}:trainer_group_by_length"])
            what[f"train_vs_trainer_group_by_length_{key}"] = "mtkd / Trainer group_by_length on the subset (informative)"

    summ = {name: summarize(rs, KEYS) for name, rs in runs.items()}
    rows = [[name, mmm(s["examples_per_s"]), mmm(s["tokens_per_s"]), mmm(s["padded_tokens_per_s"]),
             f"{s['padding_fraction']['median']:.0%}", mmm(s["first_step_s"]), mmm(s["startup_s"]), mmm(s["teardown_s"])]
            for name, s in summ.items()]
    t1 = md_table(["contender", "examples/s", "tokens/s (real)", "tokens/s (padded)", "padding", "first step s",
                   "start-up s", "tear-down s"], rows)
    t2 = ratio_table(ratios, what)
    title = (f"## Training throughput ({env.encoder_label}; batch {BATCH}, {m.train_steps} timed steps, "
             f"{m.repeats} rounds interleaved, median (min-max), {env.threads} threads)")
    print(f"\n{title}\n\n{t1}\n\n{t2}\n", flush=True)
    settings = {"batch_size": BATCH, "optimizer": "Adamax", "lr": 2e-4, "precision": "fp32",
                "timed_steps": m.train_steps, "warmup_round_steps": m.warmup_steps, "rounds": m.repeats,
                "workloads": {k: v[0] for k, v in wl.items()},
                "trainer_padded_shared_across_tasks": not m.padded_per_task,
                "trainer_dynamic_same_batches_as_mtkd": same_batches,
                "mtl_trainer_note": "Trainer runs the MTL mix's examples as one single-task run with one 3-way head",
                "timing": "first forward start -> last optimizer step end; same examples for every contender of a round"}
    return payload(env, NAME, settings, summ, ratios, [title, t1, t2], what=what)


if __name__ == "__main__":
    standalone(NAME, run)
