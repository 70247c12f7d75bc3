"""How much the teachers' soft targets tell the student beyond its hard labels.

For each seed folder and teacher task: on the training rows the student learns from (its labelled
rows, which the teachers trained on too) and on the rows the caps leave unused (the "+ unlabeled
text" row's text, which no teacher saw), how often the soft target's argmax is the gold label, the
mean probability of the gold label, and the mean entropy (nats).

    python results/glue-kd-cpu-v2/soft_target_agreement.py results/glue-kd-cpu-v2/kd-v2-4{2,3,4}

Reads each folder's config.yaml, seed-S/teach/soft_targets/ and teach/unlabeled/soft_targets/, and
the GLUE training files (`data.root`, default ../shared/data/glue); prints a Markdown table.
"""

import sys
from pathlib import Path

import numpy as np

from mtkd.config import load_config
from mtkd.data import read_split
from mtkd.soft_targets import SoftTargets
from mtkd.tasks import load_task_specs


def agreement(probs: np.ndarray, gold: np.ndarray) -> dict[str, float]:
    rows = np.arange(len(gold))
    entropy = -(probs * np.log(np.clip(probs, 1e-12, 1.0))).sum(axis=1)
    return {
        "rows": len(gold),
        "argmax_is_gold": 100 * float((probs.argmax(axis=1) == gold).mean()),
        "p_gold": float(probs[rows, gold].mean()),
        "entropy": float(entropy.mean()),
    }


def main(run_dirs: list[str]) -> None:
    print(
        "| seed | task | rows | labelled rows: argmax = gold | p(gold) | entropy "
        "| unused rows | unused rows: argmax = gold | p(gold) | entropy |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for run_dir in map(Path, run_dirs):
        cfg = load_config(run_dir / "config.yaml")
        specs = load_task_specs({n: o.override for n, o in cfg.tasks.items()}, cfg.tasks_file)
        (seed,) = cfg.seeds
        teach = run_dir / f"seed-{seed}" / "teach"
        for task in cfg.kd.teacher_tasks:
            spec = specs[task]
            train = read_split(spec, "train", cfg.data.root)
            label_of = dict(zip(train.ids, train.labels, strict=True))  # class indices (read_split parses them)
            labelled = SoftTargets.load(teach / "soft_targets", task)
            cells = agreement(labelled.values, np.array([label_of[i] for i in labelled.ids]))
            row = [
                seed,
                task,
                cells["rows"],
                f"{cells['argmax_is_gold']:.1f} %",
                f"{cells['p_gold']:.3f}",
                f"{cells['entropy']:.3f}",
            ]
            unused_folder = teach / "unlabeled" / "soft_targets"
            if (unused_folder / f"{task}+unlabeled.json").is_file():
                unused = SoftTargets.load(unused_folder, f"{task}+unlabeled")
                cells = agreement(unused.values, np.array([label_of[i] for i in unused.ids]))
                row += [
                    cells["rows"],
                    f"{cells['argmax_is_gold']:.1f} %",
                    f"{cells['p_gold']:.3f}",
                    f"{cells['entropy']:.3f}",
                ]
            else:
                row += ["–"] * 4
            print("| " + " | ".join(map(str, row)) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
