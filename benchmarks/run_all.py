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

import common  # noqa: E402

BENCHMARKS = ["train", "distill", "inference", "efficiency"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="mtkd benchmark suite")
    common.add_common_args(p)
    p.add_argument("--only", help=f"comma-separated subset of {','.join(BENCHMARKS)}")
    args = p.parse_args(argv)
    names = BENCHMARKS if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        p.error(f"unknown benchmark(s) {sorted(unknown)}; choose from {BENCHMARKS}")
    t_start = time.perf_counter()
    env = common.make_env(args)
    print(f"mtkd benchmarks, mode {env.mode.name}: encoder {env.encoder_label}, data {env.data_root}, "
          f"{env.threads} torch threads, out {env.out_dir}", flush=True)
    docs, errors, walls = {}, {}, {}
    try:
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
            common.write_json(env.out_dir, name, docs[name])
    finally:
        common.close_env(env)

    ratio_stats = {k: v for d in docs.values() for k, v in d["ratio_stats"].items()}
    combined = {
        "mode": env.mode.name, "machine": common.machine_info(), "encoder": env.encoder_label,
        "ratios": {k: v["median"] for k, v in ratio_stats.items()},
        "ratio_stats": ratio_stats,
        "targets": {k: list(common.target_for(k)) for k in ratio_stats if common.target_for(k)},
        "peak_rss_mtl_mb": docs.get("efficiency", {}).get("peak_rss_mtl_mb"),
        "wall_s": {**walls, "total": time.perf_counter() - t_start},
        "errors": errors,
        "benchmarks": docs,
    }
    if combined["peak_rss_mtl_mb"] is not None:
        combined["targets"]["peak_rss_mtl_mb"] = list(common.TARGETS["peak_rss_mtl_mb"])
    path = common.write_json(env.out_dir, "bench", combined)
    what = {k: v for d in docs.values() for k, v in d.get("ratio_what", {}).items()}
    summary = dict(ratio_stats)
    if combined["peak_rss_mtl_mb"] is not None:
        summary["peak_rss_mtl_mb"] = common.stats([combined["peak_rss_mtl_mb"]])
        what["peak_rss_mtl_mb"] = f"VmHWM of {docs['efficiency']['rss']['steps']} MTL steps, fresh process"
    print(f"\n## Summary ({env.mode.name}, {combined['wall_s']['total']:.0f} s)\n\n{common.ratio_table(summary, what)}\n")
    print(f"wrote {path} and {', '.join(f'{n}.json' for n in docs)}")
    if errors:
        print(f"FAILED: {', '.join(errors)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
