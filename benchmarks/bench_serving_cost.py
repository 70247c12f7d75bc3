"""Serving cost: the distilled student against the teacher ensembles, as mtkd builds them.

The paper's argument for distillation: an ensemble is expensive to serve, the student is one model.
Same requests for both sides, in one run on this CPU: real dev examples (sentence pairs) of the four
teacher tasks (MNLI, QQP, RTE, QNLI), each answered for all four tasks.
- student: one MT-DNN with a head per task; one encoder pass per batch answers every task
  (`MTModel.predict` with the four tasks);
- ensembles: per teacher task, `kd.top_k` = 3 fine-tuned MT-DNN members (the paper's and
  configs/glue-kd-cpu.yaml's setting), each a full encoder, their class probabilities averaged:
  12 encoder passes per example.
Both use the same encoder architecture (the bundled MiniLM), batching (`predict.batch_size`,
`max_tokens`) and max length (128); speed does not depend on the trained weights, so the encoders
are the pretrained one with fresh heads. Also reported per task (a request for one task only:
1 pass against 3). Accuracy next to it comes from the committed KD results
(results/glue-kd-cpu/results.json, mean over its seeds).

    python benchmarks/bench_serving_cost.py             # ~3 minutes on an idle 2-core machine
    python benchmarks/bench_serving_cost.py --smoke     # tiny random encoder, seconds (the test)
Writes results/bench/serving_cost.json and prints a table.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info  # noqa: E402
from reporting import md_table, write_json  # noqa: E402
from suite import REPO, quiet_hf  # noqa: E402  (suite also sets the offline / tokenizer-thread defaults)

TEACHER_TASKS = ("MNLI", "QQP", "RTE", "QNLI")
KD_CONFIG = REPO / "configs" / "glue-kd-cpu.yaml"
KD_RESULTS = REPO / "results" / "glue-kd-cpu" / "results.json"


def requests(specs, root, per_task: int, seed: int = 0):
    """(texts, pairs): `per_task` dev examples of each teacher task, mixed in a seeded order."""
    import numpy as np

    from mtkd.data import read_split

    texts, pairs = [], []
    rng = np.random.default_rng(seed)
    for t in TEACHER_TASKS:
        split = next(s for s in specs[t].splits if s.startswith("dev"))
        raw = read_split(specs[t], split, root)
        for i in rng.choice(len(raw.ids), min(per_task, len(raw.ids)), replace=False):
            texts.append(raw.text_a[i])
            pairs.append(raw.text_b[i])
    order = rng.permutation(len(texts))
    return [texts[i] for i in order], [pairs[i] for i in order]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description="mtkd benchmark: serving cost of the student vs the teacher ensembles")
    p.add_argument("--smoke", action="store_true", help="tiny random encoder, few examples (the test)")
    p.add_argument("--encoder", help="encoder folder (default: the bundled MiniLM; --smoke needs one)")
    p.add_argument("--per-task", type=int, default=100, help="dev examples per teacher task (default 100)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--members", type=int, default=3, help="ensemble members per task (kd.top_k)")
    p.add_argument("--data-root")
    p.add_argument("--out", default=str(REPO / "results" / "bench"))
    args = p.parse_args()
    if args.smoke:
        args.per_task, args.rounds = 4, 1
        if not args.encoder:
            raise SystemExit("--smoke needs --encoder FOLDER (a tiny encoder, e.g. from mtkd.testing)")
    return args


def contenders(student, members: dict, texts, pairs, settings: dict) -> dict:
    """name -> fn(): every example for all four tasks, then for one task at a time."""
    def student_all():
        student.predict(list(TEACHER_TASKS), texts, pairs, return_probs=True, **settings)

    def ensembles_all():
        for t in TEACHER_TASKS:
            probs = [m.predict(t, texts, pairs, return_probs=True, **settings) for m in members[t]]
            sum(probs) / len(probs)

    def student_one(t):
        return lambda: student.predict(t, texts, pairs, return_probs=True, **settings)

    def ensemble_one(t):
        return lambda: [m.predict(t, texts, pairs, return_probs=True, **settings) for m in members[t]]

    out = {"student: all 4 tasks": student_all, "ensembles: all 4 tasks": ensembles_all}
    for t in TEACHER_TASKS:
        out[f"student: {t} only"] = student_one(t)
        out[f"ensemble: {t} only"] = ensemble_one(t)
    return out


def timed_rounds(fns: dict, rounds: int) -> dict[str, list[float]]:
    """name -> seconds of each round, the contenders interleaved within a round."""
    seconds: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for name, fn in fns.items():
            gc.collect()
            t0 = time.perf_counter()
            fn()
            seconds[name].append(time.perf_counter() - t0)
            print(f"  round {r + 1}/{rounds} {name:<26} {seconds[name][-1]:.2f} s", file=sys.stderr, flush=True)
    return seconds


def kd_dev_scores() -> tuple[dict | None, object]:
    """(the committed KD results or None, accuracy(system, task) -> mean of its dev metrics or None)."""
    kd = json.loads(KD_RESULTS.read_text()) if KD_RESULTS.is_file() else None

    def accuracy(system, task):
        if kd is None or task not in kd["systems"].get(system, {}):
            return None
        ms = kd["systems"][system][task]
        return sum(ms.values()) / len(ms)
    return kd, accuracy


def cost_table(eps: dict, accuracy, args, n: int, params: dict, n_heads: int) -> str:
    rows = [["all 4 tasks per example", f"{eps['student: all 4 tasks']:.1f}", f"{eps['ensembles: all 4 tasks']:.1f}",
             f"{eps['student: all 4 tasks'] / eps['ensembles: all 4 tasks']:.1f}x", "", ""]]
    for t in TEACHER_TASKS:
        s, e = eps[f"student: {t} only"], eps[f"ensemble: {t} only"]
        a_s, a_e = accuracy("mtdnn_kd", t), accuracy("ensemble", t)
        rows.append([f"{t} only", f"{s:.1f}", f"{e:.1f}", f"{s / e:.1f}x",
                     "-" if a_s is None else f"{a_s:.2f}", "-" if a_e is None else f"{a_e:.2f}"])
    table = md_table(["requests", "student ex/s", "ensembles ex/s", "student / ensembles",
                      "MT-DNN-KD dev score", "ensemble dev score"], rows)
    return table + (f"\n\nParameters: student {params['student'] / 1e6:.1f} M (one encoder, {n_heads} heads); "
                    f"ensembles {params['ensembles'] / 1e6:.1f} M ({len(TEACHER_TASKS)} tasks x {args.members} members). "
                    f"{n} requests ({args.per_task} dev pairs per teacher task), median of {args.rounds} rounds.")


def main() -> None:
    args = parse_args()

    import torch

    from mtkd.config import load_config
    from mtkd.data import resolve_data_root
    from mtkd.model import MTModel
    from mtkd.task_data import TaskData

    quiet_hf()
    torch.manual_seed(0)
    cfg = load_config(KD_CONFIG)
    specs = TaskData(cfg).specs
    root = resolve_data_root(args.data_root or cfg.data.root)
    texts, pairs = requests(specs, root, args.per_task)
    settings = {"batch_size": cfg.predict.batch_size, "max_tokens": cfg.predict.max_tokens, "max_len": cfg.data.max_seq_len}
    init = "random" if args.smoke else "pretrained"
    encoder = args.encoder or cfg.encoder.name
    train_tasks = {t: s for t, s in specs.items() if "train" in s.splits and s.head_of is None}
    student = MTModel.from_encoder(encoder, train_tasks, init=init).eval()
    members = {t: [MTModel.from_encoder(encoder, train_tasks, init=init).eval() for _ in range(args.members)]
               for t in TEACHER_TASKS}
    for m in [student] + [m for ms in members.values() for m in ms]:  # warm-up: first-call allocations
        m.predict(TEACHER_TASKS[0], texts[:16], pairs[:16], **settings)
    seconds = timed_rounds(contenders(student, members, texts, pairs, settings), args.rounds)
    n = len(texts)
    eps = {k: n / statistics.median(v) for k, v in seconds.items()}
    kd, accuracy = kd_dev_scores()
    params = {"student": sum(p.numel() for p in student.parameters()),
              "ensembles": sum(p.numel() for ms in members.values() for m in ms for p in m.parameters())}
    table = cost_table(eps, accuracy, args, n, params, len(train_tasks))
    print(table)
    doc = {"benchmark": "serving_cost", "machine": machine_info(),
           "settings": {**settings, "requests": n, "per_task": args.per_task, "rounds": args.rounds,
                        "members": args.members, "encoder": encoder, "init": init},
           "seconds": seconds, "examples_per_s": eps,
           "ratio_all_tasks": eps["student: all 4 tasks"] / eps["ensembles: all 4 tasks"],
           "ratio_per_task": {t: eps[f"student: {t} only"] / eps[f"ensemble: {t} only"] for t in TEACHER_TASKS},
           "parameters": params,
           "accuracy_source": str(KD_RESULTS.relative_to(REPO)) if kd else None,
           "accuracy": {t: {"mtdnn_kd": accuracy("mtdnn_kd", t), "ensemble": accuracy("ensemble", t)} for t in TEACHER_TASKS},
           "tables": [table]}
    print(f"wrote {write_json(Path(args.out), 'serving_cost', doc)}")


if __name__ == "__main__":
    main()
