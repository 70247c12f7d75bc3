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

from mtkd_contender import mtkd_batches, run_mtkd
from reporting import md_table, median_range, ratio_table
from suite import BATCH, bench_document, standalone
from timing import interleave, paired_ratio, summarize
from train_subsets import fixed_train_sets
from trainer_contender import hf_features, run_trainer

NAME = "train"
KEYS = ["examples_per_s", "tokens_per_s", "padded_tokens_per_s", "padding_fraction", "seconds", "first_step_s",
        "steady_examples_per_s", "startup_s", "teardown_s", "steps", "examples", "tokens"]


def workloads(env) -> dict[str, tuple[list[str], int]]:
    """short name -> (tasks, num_labels of the Trainer model)."""
    return {"sst2": (["SST-2"], 2), "mrpc": (["MRPC"], 2), "mtl": (env.data.train_tasks(), 3)}


def contenders(env, loads: dict) -> list[tuple[str, object]]:
    """(name, fn(round)) of every contender of every workload, in the order they are interleaved."""
    mode = env.mode
    plans: dict = {}

    def plan(key, r):
        """(train_sets, mtkd's batches in order) of workload `key` in round r (r = -1: warm-up)."""
        if (key, r) not in plans:
            steps = mode.warmup_steps if r < 0 else mode.train_steps
            train_sets = fixed_train_sets(env, loads[key][0], steps, seed=1000 + r)
            plans[(key, r)] = (train_sets, [(train_sets[t].data, idx)
                                            for t, idx in mtkd_batches(env, train_sets, seed=1000 + r)])
        return plans[(key, r)]

    def mtkd_fn(key):
        return lambda r: run_mtkd(env, plan(key, r)[0], seed=1000 + r)

    def trainer_fn(key, dynamic, sampling):
        def fn(r):
            _, batches = plan(key, r)
            num_labels = loads[key][1]
            feats = hf_features(batches, pad_to=None if dynamic else env.cfg.data.max_seq_len, num_labels=num_labels)
            return run_trainer(env, feats, len(batches), seed=1000 + r, dynamic=dynamic, num_labels=num_labels,
                               sampling=sampling)
        return fn

    out = []
    for key in loads:
        out.append((f"{key}:mtkd", mtkd_fn(key)))
        if mode.padded_per_task or key == "sst2":
            out.append((f"{key}:trainer_padded", trainer_fn(key, dynamic=False, sampling="random")))
        out.append((f"{key}:trainer_dynamic", trainer_fn(key, dynamic=True, sampling="sequential")))
        if mode.trainer_group_by_length:
            out.append((f"{key}:trainer_group_by_length", trainer_fn(key, dynamic=True, sampling="group_by_length")))
    return out


def ratios_of(runs: dict, loads: dict, padded_per_task: bool) -> tuple[dict, dict]:
    """(ratio key -> stats, ratio key -> what it compares)."""
    ratios, what = {}, {}
    for key in loads:
        padded = f"{key}:trainer_padded" if padded_per_task else "sst2:trainer_padded"
        ratios[f"train_vs_trainer_padded_{key}"] = paired_ratio(runs[f"{key}:mtkd"], runs[padded])
        what[f"train_vs_trainer_padded_{key}"] = f"mtkd / Trainer run_glue padded-128 (on {padded.split(':')[0]})"
        ratios[f"train_vs_trainer_dynamic_{key}"] = paired_ratio(runs[f"{key}:mtkd"], runs[f"{key}:trainer_dynamic"])
        what[f"train_vs_trainer_dynamic_{key}"] = "mtkd / Trainer dynamic padding, same batches"
        if f"{key}:trainer_group_by_length" in runs:
            ratios[f"train_vs_trainer_group_by_length_{key}"] = paired_ratio(runs[f"{key}:mtkd"], runs[f"{key}:trainer_group_by_length"])
            what[f"train_vs_trainer_group_by_length_{key}"] = "mtkd / Trainer group_by_length on the subset (informative)"
    return ratios, what


def contender_table(summaries: dict) -> str:
    rows = [[name, median_range(s["examples_per_s"]), median_range(s["tokens_per_s"]), median_range(s["padded_tokens_per_s"]),
             f"{s['padding_fraction']['median']:.0%}", median_range(s["first_step_s"]), median_range(s["startup_s"]),
             median_range(s["teardown_s"])]
            for name, s in summaries.items()]
    return md_table(["contender", "examples/s", "tokens/s (real)", "tokens/s (padded)", "padding", "first step s",
                     "start-up s", "tear-down s"], rows)


def run(env) -> dict:
    mode = env.mode
    loads = workloads(env)
    runs = interleave(contenders(env, loads), mode.repeats, warmup=mode.warmup_round, label=NAME)

    # the dynamic Trainer was fed mtkd's batches: check it really ran the same shapes, then drop them
    same_batches = {key: all(a["shapes"] == b["shapes"] for a, b in zip(runs[f"{key}:mtkd"], runs[f"{key}:trainer_dynamic"]))
                    for key in loads}
    for rs in runs.values():
        for r in rs:
            r.pop("shapes", None)

    ratios, what = ratios_of(runs, loads, mode.padded_per_task)
    summaries = {name: summarize(rs, KEYS) for name, rs in runs.items()}
    t1, t2 = contender_table(summaries), ratio_table(ratios, what)
    title = (f"## Training throughput ({env.encoder_label}; batch {BATCH}, {mode.train_steps} timed steps, "
             f"{mode.repeats} rounds interleaved, median (min-max), {env.threads} threads)")
    print(f"\n{title}\n\n{t1}\n\n{t2}\n", flush=True)
    settings = {"batch_size": BATCH, "optimizer": "Adamax", "lr": 2e-4, "precision": "fp32",
                "timed_steps": mode.train_steps, "warmup_round_steps": mode.warmup_steps, "rounds": mode.repeats,
                "workloads": {k: v[0] for k, v in loads.items()},
                "trainer_padded_shared_across_tasks": not mode.padded_per_task,
                "trainer_dynamic_same_batches_as_mtkd": same_batches,
                "mtl_trainer_note": "Trainer runs the MTL mix's examples as one single-task run with one 3-way head",
                "timing": "first forward start -> last optimizer step end; same examples for every contender of a round"}
    return bench_document(env, NAME, settings, summaries, ratios, [title, t1, t2], what=what)


if __name__ == "__main__":
    standalone(NAME, run)
