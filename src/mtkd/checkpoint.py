"""Full training state on disk, written atomically; nothing is unpickled on load.

A checkpoint folder holds model.safetensors (weights), optimizer.pt (tensors only, loaded with
weights_only=True) and trainer_state.json (step, sampler position, RNG states, tasks, encoder,
config). Progress lives inside the checkpoint, never in the folder name.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mtkd.errors import CheckpointError

STATE_FILE = "trainer_state.json"


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def save_checkpoint(folder: Path, model, optimizer, state: dict, keep: int = 2) -> Path:
    """Write checkpoint `step-<step>` under `folder` atomically (temp folder + rename) and keep
    only the newest `keep`. `state` must hold 'step'; RNG states are added here."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"step-{state['step']:09d}"
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder))
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp / "model.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    (tmp / STATE_FILE).write_text(json.dumps({**state, "rng": _rng_state()}))
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)
    for old in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints under `folder`, oldest first (ordered by the step stored inside)."""
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        f = p / STATE_FILE
        if p.is_dir() and not p.name.startswith(".tmp") and f.is_file():
            try:
                found.append((json.loads(f.read_text())["step"], p))
            except (ValueError, KeyError):
                continue  # a torn write cannot happen (rename), but never trust a foreign folder
    return [p for _, p in sorted(found)]


def load_checkpoint(path: Path, model, optimizer, expect: dict) -> dict:
    """Restore weights, optimizer and RNG from `path`; `expect` (tasks, encoder) must match the
    checkpoint, else CheckpointError names the difference. Returns the trainer state."""
    state = json.loads((path / STATE_FILE).read_text())
    for key, want in expect.items():
        if state.get(key) != want:
            raise CheckpointError(f"{path}: checkpoint {key} is {state.get(key)!r} but this run has {want!r}; "
                                  "use another --output-dir or delete the checkpoint")
    weights = load_file(str(path / "model.safetensors"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    _set_rng_state(state["rng"])
    return state
