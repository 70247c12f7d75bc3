"""Full training state on disk, written atomically and verified on load; nothing is unpickled.

A checkpoint folder holds model.safetensors (weights), optimizer.pt (tensors only, loaded with
weights_only=True) and trainer_state.json (step, sampler position, RNG states, tasks, encoder,
config, and the byte size and sha256 of the two other files). trainer_state.json is written last
and the folder is renamed into place from a `.tmp-*` folder, so a complete folder is one with that
file; progress lives inside the checkpoint, never in the folder name.

On resume the newest checkpoint whose files match their recorded sizes and checksums is loaded; a
damaged newer one is skipped with a warning naming it. A write that fails (disk full) removes its
partial folder and keeps the older checkpoints; partial folders left by a kill are removed by the
next save.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mtkd.errors import CheckpointError
from mtkd.files import file_digest, write_error

STATE_FILE = "trainer_state.json"
WEIGHTS_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.pt"
TMP_PREFIX = ".tmp-"
_WRITE_ERRORS = (OSError, RuntimeError, SafetensorError)  # torch.save: RuntimeError; safetensors: SafetensorError

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------- file integrity
def check_file(path: Path, want: dict | None) -> str | None:
    """What is wrong with `path` against its recorded {"size", "sha256"} (None: nothing; with no
    record only its presence is checked)."""
    path = Path(path)
    if not path.is_file():
        return "is missing"
    if not want:
        return None
    size = path.stat().st_size
    if "size" in want and size != want["size"]:
        return f"is {size} bytes, {want['size']} were written (truncated or overwritten)"
    if "sha256" in want:
        got = file_digest(path)["sha256"]
        if got != want["sha256"]:
            return f"has sha256 {got[:12]}..., {want['sha256'][:12]}... was written (the bytes changed)"
    return None


def tensor_bytes(obj) -> int:
    """Bytes of all tensors in a (nested) state dict: what a checkpoint of it needs on disk."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_bytes(v) for v in obj)
    return 0


@contextmanager
def guarded_write(where: Path, partial: Path | list[Path], needed: int, what: str):
    """Around writing `what` into `partial` (temporary files or folders under `where`): on any
    failure the partial write is removed; a failed write becomes DiskFullError ("no space left on
    <where>: about N MB needed", N = `needed` bytes, from the tensor sizes) or CheckpointError."""
    partials = [partial] if isinstance(partial, Path) else list(partial)
    try:
        yield
    except BaseException as e:
        for p in partials:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        if not isinstance(e, _WRITE_ERRORS):
            raise
        raise write_error(e, where, what, needed) or CheckpointError(
            f"{where}: writing {what} failed: {type(e).__name__}: {e}"
        ) from e


def remove_stale_temp(folder: Path) -> list[Path]:
    """Remove the `.tmp-*` folders a killed save left under `folder` (only one process saves)."""
    removed = []
    for p in Path(folder).glob(TMP_PREFIX + "*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    if removed:
        log.info(
            "removed %d partial checkpoint folder(s) left by an interrupted save: %s",
            len(removed),
            ", ".join(p.name for p in removed),
        )
    return removed


# ----------------------------------------------------------------------------------------- RNG
def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


# -------------------------------------------------------------------------------------- saving
def save_checkpoint(folder: Path, model, optimizer, state: dict, keep: int = 2) -> Path:
    """Write checkpoint `step-<step>` under `folder` atomically (temp folder + rename) and keep
    only the newest `keep`. `state` must hold 'step'; RNG states and file checksums are added here.
    Raises DiskFullError (partial folder removed, older checkpoints kept) when the disk is full."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    remove_stale_temp(folder)
    final = folder / f"step-{state['step']:09d}"
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    needed = tensor_bytes(weights) + tensor_bytes(opt_state) + 2**20  # + headers and trainer_state.json
    tmp = Path(tempfile.mkdtemp(prefix=TMP_PREFIX, dir=folder))
    with guarded_write(folder, tmp, needed, f"the checkpoint of step {state['step']}"):
        save_file(weights, str(tmp / WEIGHTS_FILE))
        torch.save(opt_state, tmp / OPTIMIZER_FILE)
        files = {name: file_digest(tmp / name) for name in (WEIGHTS_FILE, OPTIMIZER_FILE)}
        (tmp / STATE_FILE).write_text(json.dumps({**state, "rng": _rng_state(), "files": files}))
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
            except (ValueError, KeyError, TypeError, OSError):
                continue  # unreadable: load_latest_checkpoint reports it
    return [p for _, p in sorted(found)]


# ------------------------------------------------------------------------------------- loading
def check_checkpoint(path: Path) -> tuple[dict | None, str | None]:
    """(trainer state, None) for a checkpoint whose files match their recorded sizes and sha256;
    (state or None, what is wrong) otherwise. Checkpoints written before checksums were recorded
    are checked for their files' presence only."""
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except FileNotFoundError:
        return None, f"{STATE_FILE} is missing"
    except (OSError, ValueError) as e:
        return None, f"{STATE_FILE} is unreadable ({e})"
    if not isinstance(state, dict) or not isinstance(state.get("step"), int) or "rng" not in state:
        return None, f"{STATE_FILE} has no step or RNG state"
    files = state.get("files") or {WEIGHTS_FILE: None, OPTIMIZER_FILE: None}
    for name, want in files.items():
        problem = check_file(path / name, want)
        if problem:
            return state, f"{name} {problem}"
    return state, None


def _candidates(folder: Path) -> list[Path]:
    """Checkpoint folders under `folder`, newest first: by the stored step, or for a folder whose
    state is unreadable by its name (it is only reported, never loaded)."""
    if not folder.is_dir():
        return []
    found = []
    for p in folder.iterdir():
        if not p.is_dir() or p.name.startswith(TMP_PREFIX):
            continue
        try:
            step = int(json.loads((p / STATE_FILE).read_text())["step"])
        except (OSError, ValueError, KeyError, TypeError):
            m = re.fullmatch(r"step-(\d+)", p.name)
            if m is None:
                continue  # not a checkpoint
            step = int(m.group(1))
        found.append((step, p.name, p))
    return [p for *_, p in sorted(found, reverse=True)]


def _load(path: Path, state: dict, model, optimizer, expect: dict) -> dict:
    for key, want in expect.items():
        if state.get(key) != want:
            raise CheckpointError(
                f"{path}: checkpoint {key} is {state.get(key)!r} but this run has {want!r}; "
                "use another --output-dir or delete the checkpoint"
            )
    # read both files before changing anything: an unreadable one leaves model and optimizer as they were
    weights = _read(path / WEIGHTS_FILE, lambda f: load_file(str(f)))
    opt_state = _read(path / OPTIMIZER_FILE, lambda f: torch.load(f, weights_only=True, map_location="cpu"))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not match the model: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    optimizer.load_state_dict(opt_state)
    _set_rng_state(state["rng"])
    return state


class _Damaged(Exception):
    """A checkpoint file that passed the size/checksum check cannot be read (no checksum recorded)."""


def _read(path: Path, reader):
    try:
        return reader(path)
    except (SafetensorError, RuntimeError, OSError, EOFError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else ""
        raise _Damaged(f"{path.name} cannot be read ({type(e).__name__}: {first})") from e


def load_latest_checkpoint(folder: Path, model, optimizer, expect: dict) -> tuple[Path, dict] | None:
    """Resume from the newest good checkpoint under `folder`: (its path, trainer state), or None
    when there is none. A damaged newer one (file missing, wrong size or sha256, unreadable) is
    skipped with a warning naming it and what is wrong; when every one is damaged, CheckpointError
    lists them. A checkpoint of another run (`expect` differs) is refused, never skipped."""
    folder = Path(folder)
    bad: list[str] = []
    for path in _candidates(folder):
        state, problem = check_checkpoint(path)
        if problem is None:
            try:
                return path, _load(path, state, model, optimizer, expect)
            except _Damaged as e:
                problem = str(e)
        bad.append(f"{path}: {problem}")
        log.warning("checkpoint %s is damaged (%s); trying the next older one", path, problem)
    if bad:
        raise CheckpointError(
            f"no usable checkpoint in {folder}: "
            + "; ".join(bad)
            + f"; delete {folder} to train this stage from the start"
        )
    return None
