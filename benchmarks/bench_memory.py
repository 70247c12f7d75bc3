"""Peak resident memory of the data path on a synthetic MNLI/QQP-sized task (memory must stay bounded).

Writes a synthetic 400k-example pair-classification TSV, then, each in a fresh subprocess so peaks
do not mix: (1) tokenising it into mtkd's memory-mapped cache, (2) one training epoch's data path
(Algorithm 1 sampler + dynamic-padding collate of every batch, no model), reading the cache by mmap.
Prints a table and writes JSON (default results/bench/memory.json).

    python benchmarks/bench_memory.py [--n 400000] [--out results/bench]
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the a cat dog film plot story man woman city river house music game team player market price "
         "company government year day night good bad new old big small first last long great").split()


def write_task(folder: Path, n: int) -> Path:
    rng = random.Random(0)
    path = folder / "train.tsv"
    with open(path, "w") as f:
        f.write("index\tsentence1\tsentence2\tlabel\n")
        for i in range(n):
            a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
            b = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 20)))
            f.write(f"{i}\t{a}\t{b}\t{rng.choice(('entailment', 'neutral', 'contradiction'))}\n")
    return path


def _spec(path: Path):
    from mtkd.tasks import task_from_dict

    return task_from_dict("SYN", {"head": "classification", "labels": ["contradiction", "entailment", "neutral"],
                                  "fields": {"id": "index", "text_a": "sentence1", "text_b": "sentence2", "label": "label"},
                                  "splits": {"train": {"path": str(path)}}})


def child(mode: str, path: str, cache: str) -> None:
    import suite  # noqa: F401  sets the offline HF defaults before transformers loads anything
    from transformers import AutoTokenizer

    from mtkd.data import collate, encode_split
    from mtkd.encoders import resolve_encoder
    from mtkd.sampler import MultiTaskBatchSampler

    from machine import peak_rss_mb

    tok = AutoTokenizer.from_pretrained(resolve_encoder("default"), use_fast=True)

    base = peak_rss_mb()
    t0 = time.time()
    data = encode_split(_spec(Path(path)), "train", tok, 128, cache)
    out = {"examples": len(data), "tokens": int(data.offsets[-1])}
    if mode == "epoch":
        import numpy as np

        sampler = MultiTaskBatchSampler({"SYN": np.arange(len(data))}, 32, seed=0, lengths={"SYN": data.lengths}, bucket=50)
        batches = 0
        for _, idx, _ in sampler:
            collate(data, idx)
            batches += 1
        out["batches"] = batches
    out.update(mode=mode, seconds=round(time.time() - t0, 1), baseline_rss_mb=round(base, 1),
               peak_rss_mb=round(peak_rss_mb(), 1))
    print(json.dumps(out))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400_000)
    ap.add_argument("--out", type=Path, default=Path("results/bench"))
    ap.add_argument("--child", nargs=3, metavar=("MODE", "PATH", "CACHE"))
    args = ap.parse_args()
    if args.child:
        return child(*args.child)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t0 = time.time()
        path = write_task(tmp, args.n)
        file_mb = round(path.stat().st_size / 1e6, 1)
        print(f"wrote {args.n} examples ({path.stat().st_size / 1e6:.0f} MB) in {time.time() - t0:.0f}s", file=sys.stderr)
        rows = []
        for mode in ("tokenise", "epoch"):  # the second run reads the cache written by the first
            res = subprocess.run([sys.executable, __file__, "--child", mode, str(path), str(tmp / "cache")],
                                 capture_output=True, text=True, check=True)
            rows.append(json.loads(res.stdout.strip().splitlines()[-1]))
    report = {"n_examples": args.n, "file_mb": file_mb, "runs": rows}
    print("| stage | examples | tokens | peak RSS (MB) | RSS before (MB) | seconds |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['examples']} | {r['tokens']} | {r['peak_rss_mb']} | {r['baseline_rss_mb']} | {r['seconds']} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "memory.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
