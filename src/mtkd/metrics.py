"""GLUE metrics (x100, as in the paper), the GLUE average, result tables and leaderboard files."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from mtkd.tasks import HeadKind, TaskSpec

METRIC_FUNCS = {
    "accuracy": lambda y, p: accuracy_score(y, p),
    "f1": lambda y, p: f1_score(y, p, pos_label=1, zero_division=0.0),
    "mcc": lambda y, p: matthews_corrcoef(y, p),
    "pearson": lambda y, p: pearsonr(y, p)[0] if np.std(p) > 0 else 0.0,
    "spearman": lambda y, p: spearmanr(y, p)[0] if np.std(p) > 0 else 0.0,
}


def compute_metrics(spec: TaskSpec, labels: np.ndarray, predictions: np.ndarray) -> dict[str, float]:
    """labels/predictions (N,): class indices for classification, floats for regression. x100."""
    return {m: round(100.0 * float(METRIC_FUNCS[m](labels, predictions)), 4) for m in spec.metrics}


def predictions_from_logits(spec: TaskSpec, logits: np.ndarray, groups: np.ndarray | None = None) -> np.ndarray:
    """logits (N, C) or (N, 1) -> class indices (N,) or clipped scores (N,). Ranking: within each
    group the top-scored candidate is the positive (label index 1), the others negative."""
    if spec.head == HeadKind.CLASSIFICATION:
        return logits.argmax(-1)
    scores = logits[:, 0]
    if spec.head == HeadKind.REGRESSION:
        return np.clip(scores, *spec.label_range) if spec.label_range else scores
    pred = np.zeros(len(scores), dtype=np.int64)
    for g in np.unique(groups):
        m = np.flatnonzero(groups == g)
        pred[m[np.argmax(scores[m])]] = 1
    return pred


def glue_score(results: dict[str, dict[str, float]]) -> float:
    """The GLUE average: mean over tasks of each task's mean metric (MRPC/QQP/STS-B average their
    two metrics, as the leaderboard does)."""
    per_task = [float(np.mean(list(m.values()))) for m in results.values() if m]
    return round(float(np.mean(per_task)), 4) if per_task else float("nan")


def markdown_table(results: dict[str, dict[str, float]], notes: dict[str, str] | None = None) -> str:
    """One row per (task, metric) plus the GLUE average; notes flag data caveats."""
    lines = ["| task | metric | dev |", "|---|---|---|"]
    for task, ms in results.items():
        for m, v in ms.items():
            lines.append(f"| {task} | {m} | {v:.2f} |")
    lines.append(f"| **average** | | **{glue_score(results):.2f}** |")
    if notes:
        lines.append("")
        lines += [f"- {t}: {n}" for t, n in notes.items()]
    return "\n".join(lines) + "\n"


SUBMISSION_FILES = ("CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI-m", "MNLI-mm", "QNLI", "RTE", "WNLI", "AX")


def write_submission_file(path: Path, ids, predictions, spec: TaskSpec) -> None:
    """The GLUE leaderboard layout: header `index\\tprediction`, label names (regression: the score
    clipped to [0, 5] with 3 decimals)."""
    if len(ids) != len(predictions):
        raise ValueError(f"{path}: {len(ids)} ids but {len(predictions)} predictions")
    with open(path, "w", encoding="utf-8") as f:
        f.write("index\tprediction\n")
        for i, p in zip(ids, predictions):
            if spec.head == HeadKind.REGRESSION:
                v = float(np.clip(float(p), *spec.label_range)) if spec.label_range else float(p)
                f.write(f"{i}\t{v:.3f}\n")
            else:
                f.write(f"{i}\t{spec.labels[int(p)]}\n")


def zip_submission(folder: Path, zip_path: Path) -> list[str]:
    """Zip the folder's leaderboard .tsv files; returns the names of the expected files that are
    missing (a task whose test file is not available here), also written to MISSING.txt."""
    present = sorted(p.name for p in folder.glob("*.tsv"))
    missing = [f"{n}.tsv" for n in SUBMISSION_FILES if f"{n}.tsv" not in present]
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as z:
        for name in present:
            z.write(folder / name, name)
        if missing:
            z.writestr("MISSING.txt", "No test predictions (test file not available): " + ", ".join(missing) + "\n")
    return missing


def save_results(results: dict, path_json: Path, path_md: Path | None = None, notes: dict | None = None) -> None:
    path_json.write_text(json.dumps(results, indent=2))
    if path_md is not None:
        path_md.write_text(markdown_table(results, notes))
