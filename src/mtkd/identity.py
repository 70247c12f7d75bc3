"""A stage's identity: the record of everything its result depends on, and its short hash.

Stored in each stage's DONE.json and in every checkpoint, so a finished stage is reused and a
checkpoint resumed only when nothing it depends on changed; otherwise the keys that differ are named.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path


def plain(identity):
    """The record as stored (JSON: tuples become lists, paths strings)."""
    return json.loads(json.dumps(identity, default=str))


def digest(identity) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _show(value) -> str:
    text = json.dumps(value, default=str)
    return text if len(text) < 60 else text[:57] + "..."


def differences(old, new, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two nested records, e.g. ['train.lr: 0.001 -> 0.5']."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [d for k in sorted(set(old) | set(new), key=str) for d in differences(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [f"{prefix.rstrip('.')}: {_show(old)} -> {_show(new)}"]


def resume_problem(checkpoint: Path, stored: dict | None, identity: dict | None) -> str | None:
    """Why a checkpoint whose state holds identity `stored` must not be resumed under `identity`."""
    if identity is None or stored is None:
        return None
    if plain(stored) == plain(identity):
        return None
    changed = differences(plain(stored), plain(identity))
    folder = Path(checkpoint).parent
    return (f"{folder.parent}: its checkpoint {Path(checkpoint).name} was written under other settings or data "
            f"({'; '.join(changed[:8])}). Rerun with the settings it was started with to resume it, or delete "
            f"{folder} to train that stage from the start (or use another --output-dir)")
