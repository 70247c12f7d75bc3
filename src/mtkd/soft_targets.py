"""Soft targets: the teacher ensemble's averaged class probabilities (Eq. 3), written once, offline.

A store is one pair of files per task: `<task>.safetensors` (values: (N, C) probabilities, or (N,)
mean predictions for a regression teacher) and `<task>.json` (example ids in row order, plus
provenance: members and their dev scores, the data file's fingerprint, tokenizer, max length,
temperature). Loading against data whose fingerprint differs, or with ids missing, is refused.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mtkd.data import EncodedSplit
from mtkd.errors import SoftTargetError
from mtkd.files import atomic_output

log = logging.getLogger(__name__)


def ensemble_average(member_outputs: list[np.ndarray]) -> np.ndarray:
    """Eq. 3: Q(c|X) = mean over the K members of P_k(c|X). Inputs: each member's contribution as its
    head kind gives it (`teacher_output`: (N, C) probabilities, or (N,) predictions for regression);
    returns the same shape."""
    if not member_outputs:
        raise SoftTargetError("an ensemble needs at least one member")
    shapes = {m.shape for m in member_outputs}
    if len(shapes) != 1:
        raise SoftTargetError(f"ensemble members disagree on shape: {sorted(shapes)}")
    return np.mean(np.stack(member_outputs), axis=0)


@dataclass
class SoftTargets:
    task: str
    ids: list[str]
    values: np.ndarray  # (N, C) float32 probabilities, or (N,) regression targets
    provenance: dict

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        if len(self.ids) != len(self.values):
            raise SoftTargetError(f"{self.task}: {len(self.ids)} ids but {len(self.values)} rows of values")
        values = np.ascontiguousarray(self.values, dtype=np.float32)
        meta = json.dumps({"task": self.task, "ids": self.ids, "provenance": self.provenance})
        what = f"the soft targets of {self.task}"
        # both files complete before either replaces its old version: values never sit beside another store's ids
        with atomic_output(folder / f"{self.task}.json", what, len(meta)) as meta_tmp:
            meta_tmp.write_text(meta, encoding="utf-8")
            with atomic_output(folder / f"{self.task}.safetensors", what, values.nbytes) as values_tmp:
                save_file({"values": torch.from_numpy(values)}, str(values_tmp))

    @classmethod
    def load(cls, folder: Path, task: str) -> SoftTargets:
        folder = Path(folder)
        meta_path, val_path = folder / f"{task}.json", folder / f"{task}.safetensors"
        if not meta_path.is_file() or not val_path.is_file():
            raise SoftTargetError(f"{folder}: no soft targets for task {task!r} ({meta_path.name} + {val_path.name})")
        meta = json.loads(meta_path.read_text())
        values = load_file(str(val_path))["values"].numpy()
        if len(values) != len(meta["ids"]):
            raise SoftTargetError(f"{val_path}: {len(values)} rows but {meta_path.name} lists {len(meta['ids'])} ids")
        return cls(task, meta["ids"], values, meta["provenance"])

    def aligned_to(self, data: EncodedSplit, indices: np.ndarray) -> np.ndarray:
        """A (len(data), ...) array in the split's row order, filled for the examples `indices`
        the student trains on (NaN elsewhere), so a batch's `index` looks its targets up directly.

        Refuses: a different data file (fingerprint), ids of `indices` missing from the store, and
        store ids that are not examples of this file."""
        where = f"soft targets for {self.task}"
        fp = self.provenance.get("data_fingerprint")
        if fp != data.fingerprint:
            raise SoftTargetError(
                f"{where}: written for data with fingerprint {str(fp)[:12]}..., but "
                f"{data.meta['path']} has {data.fingerprint[:12]}... (the file changed: regenerate them)"
            )
        row_of = {i: r for r, i in enumerate(self.ids)}
        missing = [data.ids[i] for i in indices if data.ids[i] not in row_of]
        if missing:
            raise SoftTargetError(
                f"{where}: {len(missing)} training examples have no soft target, e.g. ids {missing[:5]}"
            )
        known = set(data.ids)
        extra = [i for i in self.ids if i not in known]
        if extra:
            raise SoftTargetError(
                f"{where}: {len(extra)} ids are not examples of {data.meta['path']}, e.g. {extra[:5]}"
            )
        out = np.full((len(data),) + self.values.shape[1:], np.nan, dtype=np.float32)
        rows = np.array([row_of[data.ids[i]] for i in indices], dtype=np.int64)
        out[np.asarray(indices)] = self.values[rows]
        tok = self.provenance.get("tokenizer_fingerprint")
        if tok and tok != data.meta.get("tokenizer_fingerprint"):
            log.info("%s: the student's tokenizer differs from the teachers' (fine: targets are per example)", where)
        return out
