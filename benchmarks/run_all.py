"""Run the whole benchmark suite in one process (one machine, one run, contenders interleaved).

    python benchmarks/run_all.py --quick            # ~10 minutes on an idle 2-core machine (default)
    python benchmarks/run_all.py --full             # more rounds and steps
    python benchmarks/run_all.py --smoke --out DIR  # tiny random encoder, seconds (the test)

Writes <out>/<name>.json per benchmark and <out>/bench.json (every benchmark's document, plus all
ratios, their targets and peak_rss_mtl_mb at the top level); prints a markdown table per benchmark
and a summary of the ratios against their targets. Default out: results/bench.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from machine import machine_info  # noqa: E402
from reporting import TARGETS, ratio_table, target_for, write_json  # noqa: E402
from suite import add_common_args, close_env, make_env  # noqa: E402
from timing import stats  # noqa: E402

BENCHMARKS = ["train", "distill", "inference", "efficiency"]


def run_each(env, names: list[str]) -> tuple[dict, dict, dict]:
    """(documents, errors, wall seconds) by benchmark name; each document also written to its JSON."""
    docs, errors, walls = {}, {}, {}
    for name in names:
        module = __import__(f"bench_{name}")
        t0 = time.perf_counter()
        try:
            docs[name] = module.run(env)
        except Exception:  # keep the other benchmarks' results; report and fail at the end
            errors[name] = traceback.format_exc()
            print(f"benchmark {name} FAILED:\n{errors[name]}", file=sys.stderr, flush=True)
            continue
        walls[name] = time.perf_counter() - t0
        docs[name]["wall_s"] = walls[name]
        write_json(env.out_dir, name, docs[name])
    return docs, errors, walls


def combined_document(env, docs: dict, errors: dict, walls: dict, total_s: float) -> dict:
    """bench.json: every ratio and target at the top level, then every benchmark's document."""
    ratio_stats = {k: v for d in docs.values() for k, v in d["ratio_stats"].items()}
    combined = {
        "mode": env.mode.name,
        "machine": machine_info(),
        "encoder": env.encoder_label,
        "ratios": {k: v["median"] for k, v in ratio_stats.items()},
        "ratio_stats": ratio_stats,
        "targets": {k: list(target_for(k)) for k in ratio_stats if target_for(k)},
        "peak_rss_mtl_mb": docs.get("efficiency", {}).get("peak_rss_mtl_mb"),
        "wall_s": {**walls, "total": total_s},
        "errors": errors,
        "benchmarks": docs,
    }
    if combined["peak_rss_mtl_mb"] is not None:
        combined["targets"]["peak_rss_mtl_mb"] = list(TARGETS["peak_rss_mtl_mb"])
    return combined


def summary_table(docs: dict, combined: dict) -> str:
    """Every ratio (and the MTL peak RSS) against its target."""
    what = {k: v for d in docs.values() for k, v in d.get("ratio_what", {}).items()}
    summary = dict(combined["ratio_stats"])
    if combined["peak_rss_mtl_mb"] is not None:
        summary["peak_rss_mtl_mb"] = stats([combined["peak_rss_mtl_mb"]])
        what["peak_rss_mtl_mb"] = f"VmHWM of {docs['efficiency']['rss']['steps']} MTL steps, fresh process"
    return ratio_table(summary, what)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="mtkd benchmark suite")
    add_common_args(p)
    p.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    args = p.parse_args(argv)
    names = BENCHMARKS if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        p.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {BENCHMARKS}")
    t_start = time.perf_counter()
    env = make_env(args)
    print(
        f"mtkd benchmarks, mode {env.mode.name}: encoder {env.encoder_label}, data {env.data_root}, "
        f"{env.threads} torch threads, out {env.out_dir}",
        flush=True,
    )
    try:
        docs, errors, walls = run_each(env, names)
    finally:
        close_env(env)
    combined = combined_document(env, docs, errors, walls, time.perf_counter() - t_start)
    path = write_json(env.out_dir, "bench", combined)
    print(f"\n## Summary ({env.mode.name}, {combined['wall_s']['total']:.0f} s)\n\n{summary_table(docs, combined)}\n")
    print(f"wrote {path} and {', '.join(f'{n}.json' for n in docs)}")
    if errors:
        print(f"FAILED: {', '.join(errors)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
