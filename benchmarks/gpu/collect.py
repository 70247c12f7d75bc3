"""Copy what a (possibly unfinished) `mtkd run` has produced into the device run's $OUT, as at most
8 files of at most 16 MiB each. Called by run.sh every few seconds during the run and once at the end,
so a run cut off at any point still returns what it did:

  results.json   status (running / complete / cut off / failed), the script's steps, the environment,
                 the run's results.json when it exists, else every stage's metrics found so far
  results.md     the run's results.md, or a partial summary (stages done, their times, metrics so far)
  timings.json   {"script": seconds per step of run.sh, "pipeline": the run's timings.json per stage}
  charts.tar.gz  the run's charts/ (when written)
  config.yaml    the resolved config the run used
  run.log        the log (its last 15 MiB)
  pytest.txt     step 1's output (written by run.sh itself)
  nvidia-smi.txt nvidia-smi before, during (every 10 s, csv) and after (written by run.sh itself)

    python benchmarks/gpu/collect.py --run RUN_DIR --work WORK_DIR --out OUT_DIR [--status S]
"""

from __future__ import annotations

import argparse
import json
import os
import tarfile
import time
from pathlib import Path

MAX_LOG = 15 * 2**20


def _read_json(p: Path):
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def _atomic_write(path: Path, data: str | bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def _metrics_so_far(run: Path) -> dict:
    """{relative path: content} of every metrics/DONE json the stages have written so far."""
    found = {}
    for p in sorted(run.rglob("*.json")):
        rel = p.relative_to(run).as_posix()
        if p.name in ("metrics.json", "DONE.json", "selection.json", "ranking.json") and "checkpoint" not in rel:
            found[rel] = _read_json(p)
    return found


def _partial_md(status: str, script: dict, pipeline: dict, metrics: dict) -> str:
    lines = [
        f"# glue-kd-gpu device run: {status}",
        "",
        "The run's results.md was not written (the run did not finish); this is what it did.",
        "",
        "| step / stage | seconds |",
        "| --- | --- |",
    ]
    lines += [f"| script: {k} | {v:.1f} |" for k, v in script.items() if isinstance(v, (int, float))]
    lines += [f"| stage: {k} | {v:.1f} |" for k, v in pipeline.items() if isinstance(v, (int, float))]
    lines += ["", "## metrics so far (dev, x100 where mtkd reports so)", ""]
    for rel, m in metrics.items():
        if rel.endswith("metrics.json"):
            lines.append(f"- `{rel}`: `{json.dumps(m)[:2000]}`")
    return "\n".join(lines) + "\n"


def collect(run: Path, work: Path, out: Path, status: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    script = _read_json(work / "steps.json") or {}
    env = _read_json(work / "env.json") or {}
    pipeline = _read_json(run / "timings.json") or {}
    final = _read_json(run / "results.json")
    if final is not None and status == "running":
        status = "complete"
    body = {
        "status": status,
        "collected_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "script_steps_s": script,
        "environment": env,
        "stages_done": [k for k in pipeline if k != "interrupted"],  # "interrupted": unfinished attempts
        "pipeline_timings_s": pipeline,
    }
    if final is not None:
        body["results"] = final
    else:
        body["metrics_so_far"] = _metrics_so_far(run) if run.is_dir() else {}
    _atomic_write(out / "results.json", json.dumps(body, indent=2) + "\n")
    md = (
        (run / "results.md").read_text()
        if final is not None and (run / "results.md").is_file()
        else _partial_md(status, script, pipeline, body.get("metrics_so_far", {}))
    )
    if env.get("encoder_note"):
        md += f"\n_Note: {env['encoder_note']}_\n"
    _atomic_write(out / "results.md", md)
    _atomic_write(out / "timings.json", json.dumps({"script": script, "pipeline": pipeline}, indent=2) + "\n")
    if (run / "config.yaml").is_file():
        _atomic_write(out / "config.yaml", (run / "config.yaml").read_bytes())
    charts = run / "charts"
    if charts.is_dir() and any(charts.iterdir()):
        tmp = out / "charts.tar.gz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(charts, arcname="charts")
        os.replace(tmp, out / "charts.tar.gz")
    log = work / "run.log"
    if log.is_file():
        size = log.stat().st_size
        with open(log, "rb") as f:
            f.seek(max(0, size - MAX_LOG))
            _atomic_write(out / "run.log", f.read())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", type=Path, required=True)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--status", default="running")
    a = ap.parse_args(argv)
    collect(a.run, a.work, a.out, a.status)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
