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


def changed(old, new, prefix: str = "") -> list[tuple[str, object, object]]:
    """(dotted key, old value, new value) wherever two nested records differ, in key order."""
    if isinstance(old, dict) and isinstance(new, dict):
        return [c for k in sorted(set(old) | set(new), key=str) for c in changed(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def differences(old, new) -> list[str]:
    """What differs between two nested records, e.g. ['train.lr: 0.001 -> 0.5']."""
    return [f"{key}: {_show(a)} -> {_show(b)}" for key, a, b in changed(old, new)]


def checkpoint_problem(folder: Path, identity: dict | None) -> str | None:
    """Why the newest checkpoint under `folder` must not be resumed under `identity` (None: it may,
    or there is none)."""
    from mtkd.checkpoint import STATE_FILE, list_checkpoints

    ckpts = list_checkpoints(Path(folder))
    if not ckpts:
        return None
    return resume_problem(ckpts[-1], json.loads((ckpts[-1] / STATE_FILE).read_text()).get("identity"), identity)


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
