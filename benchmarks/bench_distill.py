"""Distillation step cost: offline soft targets against teachers run live.

Both contenders train the same student (the config's encoder, all heads) with `mtkd.loop.train` on
the same examples: the MTL mix of the paper's teacher tasks (MNLI, QQP, RTE, QNLI; batches allotted in
proportion to the capped training sizes), every batch with the KD loss (`mtkd.losses.kd_loss`,
soft weight 0.5, T = 1). They differ only in the loss_fn passed to the loop:
- offline: the ensemble's probabilities stored once per example (a (N, C) tensor per task, the layout
  `SoftTargets.aligned_to` gives the distill recipe) looked up by `batch["index"]`;
- live (TextBrewer style): the 3 teachers (MTModels of the same architecture, dropout 0.1/0.2/0.3,
  eval mode, no_grad) run forward on every batch, their softmax probabilities averaged, then kd_loss.
The stored probabilities are random rows on the simplex (seeded): their values do not change the
cost, and computing them with the teachers would only add set-up time.
"""

from __future__ import annotations

import torch

from mtkd_contender import run_mtkd
from reporting import md_table, median_range, ratio_table
from suite import bench_document, standalone
from timing import interleave, paired_ratio, summarize
from train_subsets import fixed_train_sets

NAME = "distill"
TEACHER_TASKS = ["MNLI", "QQP", "RTE", "QNLI"]
KEYS = ["examples_per_s", "tokens_per_s", "seconds", "first_step_s", "steady_examples_per_s", "startup_s",
        "teardown_s", "steps", "examples", "tokens"]


def offline_factory(tables: dict[str, torch.Tensor]):
    from mtkd.losses import kd_loss

    def factory(model):
        def loss_fn(task, logits, batch):
            soft = tables[task][batch["index"].cpu()].to(logits.device)
            return kd_loss(model.tasks[task].head, logits, batch.get("labels"), soft, 0.5, 1.0)
        return loss_fn
    return factory


def live_factory(teachers: list):
    from mtkd.losses import kd_loss

    def factory(model):
        def loss_fn(task, logits, batch):
            with torch.no_grad():
                probs = torch.stack([torch.softmax(t(batch["input_ids"], batch["attention_mask"], batch["token_type_ids"],
                                                     task=task).float(), dim=-1) for t in teachers]).mean(0)
            return kd_loss(model.tasks[task].head, logits, batch.get("labels"), probs, 0.5, 1.0)
        return loss_fn
    return factory


def soft_target_tables(env, tasks: list[str]) -> dict:
    """task -> (N, C) random probability rows (seeded), one per training example: a store's layout."""
    g = torch.Generator().manual_seed(0)
    tables = {}
    for t in tasks:
        data = env.data.train_set(t).data
        tables[t] = torch.softmax(torch.randn(len(data), env.data.specs[t].num_outputs, generator=g) * 2, dim=-1)
    return tables


def frozen_teachers(env) -> list:
    """The 3 ensemble members (dropout 0.1/0.2/0.3), eval mode, no gradients."""
    teachers = []
    for d in (0.1, 0.2, 0.3):
        t = env.new_model(dropout=d)
        t.eval()
        for p in t.parameters():
            p.requires_grad_(False)
        teachers.append(t)
    return teachers


def run(env) -> dict:
    mode = env.mode
    tasks = [t for t in TEACHER_TASKS if t in env.data.specs]
    tables = soft_target_tables(env, tasks)
    teachers = frozen_teachers(env)
    cache: dict = {}

    def sets(r):
        if r not in cache:
            cache[r] = fixed_train_sets(env, tasks, mode.warmup_steps if r < 0 else mode.distill_steps, seed=2000 + r)
        return cache[r]

    contenders = [
        ("offline_soft_targets", lambda r: run_mtkd(env, sets(r), 2000 + r, loss_fn_factory=offline_factory(tables))),
        ("live_teachers_x3", lambda r: run_mtkd(env, sets(r), 2000 + r, loss_fn_factory=live_factory(teachers))),
    ]
    runs = interleave(contenders, mode.repeats, warmup=mode.warmup_round, label=NAME)
    for rs in runs.values():
        for r in rs:
            r.pop("shapes", None)
    ratios = {"distill_offline_vs_live": paired_ratio(runs["offline_soft_targets"], runs["live_teachers_x3"])}
    summaries = {name: summarize(rs, KEYS) for name, rs in runs.items()}
    rows = [[name, median_range(s["examples_per_s"]), median_range(s["tokens_per_s"]), median_range(s["seconds"])]
            for name, s in summaries.items()]
    t1 = md_table(["student training", "examples/s", "tokens/s (real)", "timed s"], rows)
    what = {"distill_offline_vs_live": "offline soft targets / 3 teachers run live"}
    t2 = ratio_table(ratios, what)
    title = (f"## Distillation step cost ({env.encoder_label} student and teachers; tasks {', '.join(tasks)}; "
             f"{mode.distill_steps} timed steps, {mode.repeats} rounds interleaved)")
    print(f"\n{title}\n\n{t1}\n\n{t2}\n", flush=True)
    settings = {"tasks": tasks, "timed_steps": mode.distill_steps, "rounds": mode.repeats, "ensemble_members": 3,
                "teacher_dropouts": [0.1, 0.2, 0.3], "soft_weight": 0.5, "temperature": 1.0,
                "offline_targets": "random probability rows (seeded), indexed by batch['index']",
                "live_teachers": "eval mode, torch.no_grad, softmax averaged over 3 members"}
    return bench_document(env, NAME, settings, summaries, ratios, [title, t1, t2], what=what)


if __name__ == "__main__":
    standalone(NAME, run)
