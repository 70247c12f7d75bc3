"""The report's files (results.json, results.md, charts/), from one run or combined from several.

combine(): the same outputs from several runs of one config that differ only in their seeds
(`mtkd combine A/results.json B/results.json --output-dir DIR`), e.g. a second seed run later;
the intervals come from the predictions in each results.json's run folder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from mtkd.errors import ConfigError, MtkdError
from mtkd.files import atomic_write, write_json
from mtkd.report.charts import plot_charts
from mtkd.report.intervals import interval_specs, paired_intervals
from mtkd.report.markdown import results_markdown
from mtkd.report.scores import SYSTEMS, aggregate, compare, targets
from mtkd.stages import changed

log = logging.getLogger(__name__)


def write_results(results: dict, out_dir: Path) -> None:
    write_json(out_dir / "results.json", results)
    markdown = results_markdown(results)
    atomic_write(out_dir / "results.md", markdown)
    plot_charts(results, out_dir / "charts")
    log.info("results:\n%s", markdown)


def combine(paths: list[Path], out_dir: Path) -> dict:
    """Merge the results.json of runs of one config that differ only in `seeds` into one results.json
    (mean ± std over all their seeds), results.md and charts. Refuses other differences and repeated seeds."""
    loaded = _load_results(paths)
    first = loaded[0][1]
    per_seed = _merge_seeds(loaded)
    seeds = sorted({int(s) for runs in per_seed.values() for s in runs})
    ordered = {s: [per_seed[s][str(seed)] for seed in seeds if str(seed) in per_seed[s]] for s in SYSTEMS if s in per_seed}
    missing = {s: [seed for seed in seeds if str(seed) not in per_seed[s]] for s in ordered}
    if any(missing.values()):
        raise ConfigError("systems missing seeds: " + "; ".join(f"{s}: {m}" for s, m in missing.items() if m))
    teacher_tasks = first["config"].get("kd", {}).get("teacher_tasks", [])
    results = aggregate(ordered, seeds)
    if "report_layout" in first:
        results["report_layout"] = first["report_layout"]
    results["comparison"] = compare(results["systems"], teacher_tasks, results.get("report_layout"))
    results["per_seed"] = {s: {str(seed): per_seed[s][str(seed)] for seed in seeds} for s in ordered}
    timings = {}
    for _, res in loaded:
        timings.update({k: v for k, v in res.get("timings", {}).items() if k.startswith("seed-")})
    results.update(timings=timings, config={**first["config"], "seeds": seeds}, notes=first.get("notes", {}),
                   combined_from=[str(path) for path, _ in loaded])
    results.update(_combined_intervals(loaded, results))
    results["targets"] = targets(results, teacher_tasks)
    write_results(results, out_dir)
    return results


def _load_results(paths: list[Path]) -> list[tuple[Path, dict]]:
    """Each run's (results.json path, content); a run folder stands for its results.json."""
    loaded = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            path = path / "results.json"
        if not path.is_file():
            raise ConfigError(f"{path}: no such results file")
        try:
            loaded.append((path, json.loads(path.read_text())))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
    return loaded


def _merge_seeds(loaded: list[tuple[Path, dict]]) -> dict[str, dict[str, dict]]:
    """{system: {seed: {task: metrics}}} over all runs, refusing a config that differs from the
    first's in more than its seeds, and a seed that two runs both have."""
    first_path, first = loaded[0]
    base_cfg = {k: v for k, v in first.get("config", {}).items() if k != "seeds"}
    per_seed, seeds_of = {}, {}
    for path, res in loaded:
        for field in ("systems", "config", "seeds"):
            if field not in res:
                raise ConfigError(f"{path}: field {field!r} missing: not an experiment's results.json")
        diff = [key for key, _, _ in changed(base_cfg, {k: v for k, v in res["config"].items() if k != "seeds"})]
        if diff:
            raise ConfigError(f"{path}: config differs from {first_path} in {', '.join(diff)}: only seeds may differ")
        for system, runs in _per_seed_of(path, res).items():
            for seed, metrics in runs.items():
                if seed in seeds_of.get(system, {}):
                    raise ConfigError(f"{path}: seed {seed} of {system} is also in {seeds_of[system][seed]}")
                seeds_of.setdefault(system, {})[seed] = path
                per_seed.setdefault(system, {})[seed] = metrics
    return per_seed


def _per_seed_of(path: Path, res: dict) -> dict[str, dict[str, dict]]:
    """{system: {seed: {task: metrics}}} of one results.json (older single-seed files lack per_seed)."""
    if "per_seed" in res:
        return res["per_seed"]
    if len(res.get("seeds", [])) == 1:
        return {s: {str(res["seeds"][0]): v} for s, v in res["systems"].items()}
    raise ConfigError(f"{path}: no 'per_seed' field and {len(res.get('seeds', []))} seeds: cannot recover each seed's numbers")


def _combined_intervals(loaded: list[tuple[Path, dict]], results: dict) -> dict:
    """The paired intervals, from each seed's per-example predictions in the run folder of its
    results.json; a note instead where the first config's task definitions cannot be loaded."""
    first_path, first = loaded[0]
    seed_dirs = {int(seed): path.parent / f"seed-{seed}" for path, res in loaded for seed in res["seeds"]}
    try:
        specs = interval_specs(first["config"])
    except (MtkdError, OSError) as e:
        return {"intervals_note": f"the task definitions of {first_path}'s config could not be loaded ({e})"}
    return paired_intervals(specs, results, seed_dirs)
