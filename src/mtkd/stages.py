"""A run's stages: each stage's identity, whether it is done, and the folders it owns.

A stage's identity records everything its result depends on: its own settings, the model it starts
from (an upstream stage's key, or the encoder's weights) and the fingerprints of the data it reads.
Its hash, the stage key, is in the stage's DONE.json, the record in every checkpoint. A finished
stage is reused only under the same identity, a changed one is done again, and a checkpoint written
under another identity is refused (resuming it would mix two experiments), naming what differs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path

from mtkd.checkpoint import STATE_FILE, list_checkpoints
from mtkd.encoders import resolve_encoder
from mtkd.errors import CheckpointError, ConfigError
from mtkd.files import file_fingerprint
from mtkd.model import weights_sha256

log = logging.getLogger(__name__)


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
        return [c for k in sorted(set(old) | set(new), key=str)
                for c in changed(old.get(k), new.get(k), f"{prefix}{k}.")]
    return [] if old == new else [(prefix.rstrip("."), old, new)]


def differences(old, new) -> list[str]:
    """What differs between two nested records, e.g. ['train.lr: 0.001 -> 0.5']."""
    return [f"{key}: {_show(a)} -> {_show(b)}" for key, a, b in changed(old, new)]


def checkpoint_problem(folder: Path, identity: dict | None) -> str | None:
    """Why the newest checkpoint under `folder` must not be resumed under `identity` (None: it may,
    or there is none)."""
    ckpts = list_checkpoints(Path(folder))
    stored = json.loads((ckpts[-1] / STATE_FILE).read_text()).get("identity") if ckpts else None
    if identity is None or stored is None or plain(stored) == plain(identity):
        return None
    folder, changes = ckpts[-1].parent, differences(plain(stored), plain(identity))
    return (f"{folder.parent}: its checkpoint {ckpts[-1].name} was written under other settings or data "
            f"({'; '.join(changes[:8])}). Rerun with the settings it was started with to resume it, or delete "
            f"{folder} to train that stage from the start (or use another --output-dir)")


class Stages:
    """The stages of one run folder: which stage makes which model folder (so a downstream stage's
    identity names its upstream stage), DONE.json markers, and deletions kept inside the run folder.
    Collectives: `mark_done` only, which every rank calls at the same point."""

    def __init__(self, out_dir: Path, accelerator):
        self.out_dir = Path(out_dir)
        self.accelerator = accelerator
        self.problems: list[str] = []  # refusals found while planning
        self._models: dict[str, dict] = {}  # model folder -> {"key", "tokenizer"}
        self._weights: dict[str, str | None] = {}
        self._reported: set[str] = set()
        self.finished = 0  # stages this process has marked done (trained or computed, not found done)

    # ------------------------------------------------------------------------------ identities
    def encoder_weights(self, name: str) -> str | None:
        """sha256 of a local encoder's weights file (a hub name is identified by its name)."""
        if name not in self._weights:
            folder = Path(resolve_encoder(name))
            files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin")) \
                if folder.is_dir() else []
            files += [folder / "config.json"] if (folder / "config.json").is_file() else []
            self._weights[name] = digest([file_fingerprint(f) for f in files]) if files else None
        return self._weights[name]

    def register_model(self, folder: Path, key: str, tokenizer: str) -> None:
        """Record the identity of a model folder a stage of this run produces (or will produce)."""
        self._models[str(Path(folder).resolve())] = {"key": key, "tokenizer": str(tokenizer)}

    def planned_keys(self) -> dict[str, str]:
        """Resolved model folder -> the key of the stage that produces it, for every stage seen so far."""
        return {folder: known["key"] for folder, known in self._models.items()}

    def stage_key(self, folder: Path) -> str | None:
        """The key of the stage of this run that produces `folder` (a model, the soft targets), if any."""
        known = self._models.get(str(Path(folder).resolve()))
        return known["key"] if known is not None else None

    def model_identity(self, folder: Path) -> dict:
        """The identity of a model to start from: the producing stage's key when this run made it,
        else the checksum of its weights."""
        key = self.stage_key(folder)
        if key is not None:
            return {"stage": key}
        if not (Path(folder) / "model.safetensors").is_file():
            raise CheckpointError(f"{folder}: not an mtkd model folder (no model.safetensors)")
        return {"weights": weights_sha256(folder)}

    def model_tokenizer(self, folder: Path) -> str:
        """Where the tokenizer of a model folder comes from: for a model this run makes, the encoder it
        was built from (the same whether the folder exists yet, or holds a stale model); else the
        folder itself."""
        known = self._models.get(str(Path(folder).resolve()))
        return known["tokenizer"] if known is not None else str(folder)

    # ---------------------------------------------------------------------------------- markers
    def done(self, folder: Path, identity: dict) -> dict | None:
        """The finished stage's summary when it was made from exactly `identity`; else None (the
        stage runs; a stale DONE.json is reported with what changed)."""
        try:
            info = json.loads((Path(folder) / "DONE.json").read_text())
        except FileNotFoundError:
            return None
        if info.get("stage_key") == digest(identity):
            return info
        if self.accelerator.is_main_process and str(folder) not in self._reported:  # once (planning sees it first)
            self._reported.add(str(folder))
            changed = differences(info.get("identity"), plain(identity)) if "identity" in info \
                else ["made by an older mtkd"]
            log.warning("%s is out of date, training it again (%s)", folder, "; ".join(changed[:8]))
        return None

    def check_resumable(self, folder: Path, identity: dict) -> None:
        """Planning: a checkpoint written under other inputs is a refusal (resuming would mix them)."""
        problem = checkpoint_problem(Path(folder) / "checkpoints", identity)
        if problem:
            self.problems.append(problem)

    def mark_done(self, folder: Path, info: dict, identity: dict) -> None:
        self.finished += 1
        if self.accelerator.is_main_process:
            Path(folder).mkdir(parents=True, exist_ok=True)
            tmp = Path(folder) / "DONE.json.tmp"
            tmp.write_text(json.dumps({**info, "stage_key": digest(identity), "identity": identity}, indent=2,
                                      default=str))
            tmp.replace(Path(folder) / "DONE.json")
        self.accelerator.wait_for_everyone()

    # ---------------------------------------------------------------------------------- folders
    def check_inside(self, path: Path) -> None:
        """Refuse a stage folder outside the run folder (nothing of the run is written or deleted there)."""
        path, root = Path(path).resolve(), self.out_dir.resolve()
        if path == root or root not in path.parents:
            raise ConfigError(f"refusing to delete {path}: it is not inside the run folder {root}")

    def remove_inside(self, path: Path) -> None:
        """Delete a folder of this run (e.g. a finished stage's checkpoints); refuses anything outside."""
        self.check_inside(path)
        shutil.rmtree(Path(path).resolve(), ignore_errors=True)
