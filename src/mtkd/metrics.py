"""Results: the GLUE average over tasks, result tables, per-example prediction files
(predictions.npz) and leaderboard files. A split's metrics (x100, as in the paper) are its head
kind's (`mtkd.heads`: `kind_of(spec).score(logits, labels, groups)`)."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from mtkd.errors import DataError
from mtkd.files import atomic_output, atomic_write
from mtkd.heads import kind_of
from mtkd.tasks import TaskSpec, glue_tasks

PREDICTIONS_FILE = "predictions.npz"
PREDICTION_FIELDS = ("ids", "labels", "predictions", "groups")


def save_predictions(path: Path, entries: dict[str, dict]) -> None:
    """Per-example predictions of evaluated splits, compressed: {report name: {"ids", "labels",
    "predictions", "groups"}} as arrays named `<report>.<field>` (predictions: label indices, or
    the regression scores, as the head kind's `predictions` gives them; groups: ranking tasks
    only). Written atomically."""
    arrays = {
        f"{report}.{k}": np.asarray(e[k])
        for report, e in entries.items()
        for k in PREDICTION_FIELDS
        if e.get(k) is not None
    }
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    atomic_write(path, buf.getvalue())


def load_predictions(path: Path) -> dict[str, dict[str, np.ndarray]]:
    """What `save_predictions` wrote: {report name: {"ids", "labels", "predictions"[, "groups"]}}."""
    out: dict[str, dict[str, np.ndarray]] = {}
    with np.load(Path(path), allow_pickle=False) as f:
        for key in f.files:
            report, field = key.rsplit(".", 1)
            out.setdefault(report, {})[field] = f[key]
    return out


# metrics.json (evaluate): {dev report name: {metric: value}, ..., "test": {test report name: {metric: value}}};
# the "test" entry holds the labelled test splits and is there only when one was scored
TEST_RESULTS = "test"


def dev_and_test(results: dict) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """A metrics.json's dev entries and its labelled test entries (`TEST_RESULTS`)."""
    return {k: v for k, v in results.items() if k != TEST_RESULTS}, dict(results.get(TEST_RESULTS) or {})


def report_layout(specs: dict[str, TaskSpec]) -> dict[str, dict[str, list[str]]]:
    """{task: {"reports": [...], "beside": [...]}}: which dev report names make each task's score.

    A task with a dev split reported under the task's own name is scored on that split; its other
    dev splits (a custom task's extra evaluation sets, e.g. IMDB-ood) are reported beside it and
    count neither as tasks nor in a task's score. A task whose dev splits all have other names
    (MNLI-m and MNLI-mm) is scored on their mean, as on the GLUE leaderboard."""
    out = {}
    for name, spec in specs.items():
        reports = list(dict.fromkeys(spec.report_name(s) for s in spec.eval_splits("dev")))
        if reports:
            main = [name] if name in reports else reports
            out[name] = {"reports": main, "beside": [r for r in reports if r not in main]}
    return out


def task_scores(
    results: dict[str, dict[str, float]],
    specs: dict[str, TaskSpec] | None = None,
    layout: dict[str, dict[str, list[str]]] | None = None,
) -> dict[str, float]:
    """One score per task from {report name: {metric: value}}: each report's mean metric
    (MRPC/QQP/STS-B average their two metrics, as the leaderboard does), then the mean over the
    report names that make the task's score (`report_layout`), so MNLI-m and MNLI-mm make one MNLI
    score as on the GLUE leaderboard and a custom task's extra dev splits are left out. `layout`
    (else that of `specs`, default: the built-in GLUE tasks) says which report names belong to
    which task; other report names count as tasks of their own; reports without metrics (AX) and
    the labelled test entries are left out. Not rounded."""
    if layout is None:
        layout = report_layout(glue_tasks() if specs is None else specs)
    task_of = {r: t for t, lay in layout.items() for r in lay["reports"]}
    beside = {r for lay in layout.values() for r in lay["beside"]} - set(task_of)
    per_task: dict[str, list[float]] = {}
    for report, ms in dev_and_test(results)[0].items():
        if ms and report not in beside:
            per_task.setdefault(task_of.get(report, report), []).append(float(np.mean(list(ms.values()))))
    return {t: float(np.mean(v)) for t, v in per_task.items()}


def glue_score(
    results: dict[str, dict[str, float]],
    specs: dict[str, TaskSpec] | None = None,
    layout: dict[str, dict[str, list[str]]] | None = None,
) -> float:
    """The GLUE average: the mean of `task_scores` (MNLI-m and MNLI-mm averaged into one task first;
    extra dev splits and test entries left out)."""
    per_task = list(task_scores(results, specs, layout).values())
    return round(float(np.mean(per_task)), 4) if per_task else float("nan")


def markdown_table(
    results: dict[str, dict[str, float]], notes: dict[str, str] | None = None, specs: dict[str, TaskSpec] | None = None
) -> str:
    """One row per (dev report, metric) plus the average over tasks (`glue_score` with `specs`); then
    the labelled test splits' rows, if any (not averaged); notes flag data caveats and name the extra
    dev splits left out of the average."""
    dev, test = dev_and_test(results)
    lines = []
    if dev or not test:
        lines += ["| task | metric | dev |", "|---|---|---|"]
        for task, ms in dev.items():
            for m, v in ms.items():
                lines.append(f"| {task} | {m} | {v:.2f} |")
        layout = report_layout(glue_tasks() if specs is None else specs)
        lines.append(f"| **average** | | **{glue_score(dev, layout=layout):.2f}** |")
        extra = [f"{r} (extra dev split of {t})" for t, lay in layout.items() for r in lay["beside"] if r in dev]
        if extra:
            lines += ["", "The average is over tasks; not in it: " + ", ".join(extra) + "."]
    if test:
        lines += ([""] if lines else []) + ["| task | metric | test (labelled test file) |", "|---|---|---|"]
        for task, ms in test.items():
            for m, v in ms.items():
                lines.append(f"| {task} | {m} | {v:.2f} |")
    if notes:
        lines.append("")
        lines += [f"- {t}: {n}" for t, n in notes.items()]
    return "\n".join(lines) + "\n"


SUBMISSION_FILES = ("CoLA", "SST-2", "MRPC", "STS-B", "QQP", "MNLI-m", "MNLI-mm", "QNLI", "RTE", "WNLI", "AX")


def write_submission_file(path: Path, ids, predictions, spec: TaskSpec) -> None:
    """The GLUE leaderboard layout: header `index\\tprediction`, one cell per prediction as its head
    kind writes it (label names; regression: the score clipped to the label range, 3 decimals). Ids
    holding a tab or line break (possible in CSV/JSON data) would add columns or rows, so they are
    refused (DataError) before anything is written."""
    if len(ids) != len(predictions):
        raise ValueError(f"{path}: {len(ids)} ids but {len(predictions)} predictions")
    for i in ids:
        if any(c in str(i) for c in "\t\r\n"):
            raise DataError(
                path,
                f"example id {str(i)!r} holds a tab or line break, which would break the "
                f"TSV layout (index<TAB>prediction per line); fix the id in the data file",
            )
    kind = kind_of(spec)
    rows = "".join(f"{i}\t{kind.submission_value(p)}\n" for i, p in zip(ids, predictions, strict=False))
    atomic_write(path, "index\tprediction\n" + rows)


def zip_submission(folder: Path, zip_path: Path) -> list[str]:
    """Zip the folder's leaderboard .tsv files; returns the names of the expected files that are
    missing (a task whose test file is not available here), also written to MISSING.txt."""
    present = sorted(p.name for p in folder.glob("*.tsv"))
    missing = [f"{n}.tsv" for n in SUBMISSION_FILES if f"{n}.tsv" not in present]
    with atomic_output(zip_path) as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as z:
        for name in present:
            z.write(folder / name, name)
        if missing:
            z.writestr("MISSING.txt", "No test predictions (test file not available): " + ", ".join(missing) + "\n")
    return missing
