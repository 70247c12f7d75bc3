"""Reporting: the targets the suite's ratios are read against, markdown tables, and the JSON files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

# targets printed next to the ratios; direction ">=" unless noted
TARGETS = {
    "train_vs_trainer_padded": (">=", 2.0),
    "train_vs_trainer_dynamic": (">=", 1.0),
    "distill_offline_vs_live": (">=", 1.8),
    "softtarget_gen_vs_padded_forward": (">=", 2.0),
    "all_heads_one_pass_vs_per_task_models": (">=", 4.0),
    "train_step_fraction_of_matmul_peak": (">=", 0.60),
    "train_step_32x128_fraction_of_matmul_peak": (">=", 0.60),
    "peak_rss_mtl_mb": ("<=", 3072.0),
}


def target_for(key: str):
    """The target of a ratio key: the longest TARGETS prefix it starts with (`..._sst2` -> its family's)."""
    for prefix, t in sorted(TARGETS.items(), key=lambda kv: -len(kv[0])):
        if key == prefix or key.startswith(prefix + "_"):
            return t
    return None


# ------------------------------------------------------------------------------------------ tables
def fmt(x, digits=3) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        if abs(x) >= 1000:
            return f"{x:,.0f}"
        return f"{x:.{digits}g}"
    return str(x)


def md_table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def median_range(s: dict) -> str:
    """A `timing.stats` record as 'median (min-max)'."""
    return f"{fmt(s['median'])} ({fmt(s['min'])}-{fmt(s['max'])})"


def _met(key: str, s: dict) -> str:
    t = target_for(key)
    if t is None or s["median"] is None:
        return "-"
    return "yes" if (s["median"] >= t[1] if t[0] == ">=" else s["median"] <= t[1]) else "NO"


def ratio_table(ratios: dict[str, dict], what: dict[str, str] | None = None) -> str:
    rows = []
    for key, s in ratios.items():
        t = target_for(key)
        rows.append([key, (what or {}).get(key, ""), median_range(s), f"{t[0]} {t[1]}" if t else "-", _met(key, s)])
    return md_table(["ratio", "what", "median (min-max)", "target", "met"], rows)


# -------------------------------------------------------------------------------------------- JSON
def _finite(obj):
    """NaN/inf -> None (strict JSON readers refuse them); numpy scalars -> Python numbers."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        return _finite(obj.item())
    return obj


def write_json(out_dir: Path, name: str, payload: dict) -> Path:
    """<out_dir>/<name>.json, written to a temporary file first so a reader never sees half of it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(_finite(payload), indent=1))
    tmp.replace(path)
    return path
