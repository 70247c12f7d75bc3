"""What the pipeline manages about stages: their identity, whether one is done, and its folders.

A stage is reused only when everything it depends on is unchanged: its own settings, the identity
of the model it starts from (an upstream stage's key, or the encoder's weights) and the fingerprints
of the data it reads. That record's hash is stored in the stage's DONE.json and in every checkpoint.
A finished stage whose inputs changed is trained again; a checkpoint of a stage whose inputs changed
is refused (resuming it would mix two experiments).

Planning (`mtkd run` before training): recipes compute every identity and check every existing
stage, but train and predict nothing; what would be refused is collected in `problems`.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from mtkd.config import EncoderConfig, TrainConfig, to_dict
from mtkd.files import file_fingerprint
from mtkd.errors import CheckpointError, ConfigError
from mtkd.identity import checkpoint_problem, differences, digest, plain
from mtkd.loop import autocast
from mtkd.model import resolve_encoder

log = logging.getLogger(__name__)

# TrainConfig fields that do not change what a stage computes (resume and reuse ignore them)
NOT_SHAPING = ("checkpoint_every", "keep_checkpoints", "log_every", "check_every")


def train_settings(cfg: TrainConfig, device=None) -> dict:
    """The settings that shape a training run; `precision` as applied on `device` (fp32 on a CPU)."""
    out = {k: v for k, v in to_dict(cfg).items() if k not in NOT_SHAPING}
    if device is not None:
        out["precision"] = autocast(cfg.precision, device)[1]
    return out


class Stages:
    """The stages of one run folder: which stage makes which model folder (so a downstream stage's
    identity names its upstream stage), DONE.json markers, and deletions kept inside the run folder.
    Collectives: `mark_done` only, which every rank calls at the same point."""

    def __init__(self, out_dir: Path, accelerator):
        self.out_dir = Path(out_dir)
        self.accelerator = accelerator
        self.planning = False
        self.problems: list[str] = []  # refusals found while planning
        self._models: dict[str, dict] = {}  # model folder -> {"key", "tokenizer"}
        self._weights: dict[str, str | None] = {}
        self._reported: set[str] = set()
        self.finished = 0  # stages this process has marked done (trained or computed, not found done)

    # ------------------------------------------------------------------------------ identities
    def encoder_identity(self, encoder_cfg: EncoderConfig, dropout: float | None = None,
                         encoder: str | None = None) -> dict:
        """A fresh model's start: the encoder (its weights' checksum), depth, dropout and init."""
        name = str(encoder or encoder_cfg.name)
        return {"encoder": name, "weights": self._encoder_weights(name), "num_hidden_layers": encoder_cfg.num_hidden_layers,
                "dropout": encoder_cfg.dropout if dropout is None else dropout, "init": encoder_cfg.init}

    def _encoder_weights(self, name: str) -> str | None:
        """sha256 of a local encoder's weights file (a hub name is identified by its name)."""
        if name not in self._weights:
            folder = Path(resolve_encoder(name))
            files = (sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))) if folder.is_dir() else []
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
        from mtkd.model import weights_sha256

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
            changed = differences(info.get("identity"), plain(identity)) if "identity" in info else ["made by an older mtkd"]
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
            tmp.write_text(json.dumps({**info, "stage_key": digest(identity), "identity": identity}, indent=2, default=str))
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
