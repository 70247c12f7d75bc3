"""Recipe: metrics (x100) per task, from each task's fine-tuned model, on the dev splits and on
every labelled test split.

`models` maps task -> model folder (a fine-tuned model per task, or one MTL model for all). Each
model reads the data through its own tokenizer. Under several processes every rank predicts its
share of each split; all ranks return the same results, rank 0 writes them.

Writes DIR/metrics.json, DIR/metrics.md (with the average over tasks) and DIR/predictions.npz (every
scored dev example's id, label, prediction and ranking group, per report name: `metrics.save_predictions`,
what the paired bootstrap of the KD experiment resamples). metrics.json holds the
dev results as {report name: {metric: value}} and, when a labelled test split was scored, the test
results under the key "test" in the same form (`mtkd.metrics.TEST_RESULTS`):

    {"SST-2": {"accuracy": 86.4}, "IMDB": {"accuracy": 88.1}, "test": {"IMDB": {"accuracy": 87.6}}}

A test split is labelled when its file has the task's label column with a value on every row (GLUE
test files have none); unlabelled and absent test files are listed in the log, not scored.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

from mtkd.data import split_path
from mtkd.errors import ConfigError, DataError
from mtkd.heads import kind_of
from mtkd.metrics import PREDICTIONS_FILE, TEST_RESULTS, markdown_table, save_predictions
from mtkd.model import load_model, weights_sha256
from mtkd.model_card import record_eval_metrics
from mtkd.recipes.runner import Runner
from mtkd.task_data import TaskData

log = logging.getLogger(__name__)

EVAL_PREFIXES = ("dev", "test")


def split_prefix(specs: dict, prefix: str) -> str:
    """Check `mtkd evaluate --split PREFIX`: a dev or test split prefix some task of the config has."""
    defined = sorted({s for spec in specs.values() for s in spec.splits if s.startswith(EVAL_PREFIXES)})
    if not prefix.startswith(EVAL_PREFIXES) or not any(s.startswith(prefix) for s in defined):
        raise ConfigError(f"--split {prefix!r}: expected the start of a dev or test split name of the config's "
                          f"tasks (dev, test, ...); they have {defined}")
    return prefix


def evaluate(data: TaskData, runner: Runner, models: dict[str, Path], out: Path | None = None, split: str = "dev",
             test: bool = False) -> dict:
    """Score the splits whose names start with `split` (dev: the dev sets after dev_cap; test...:
    the labelled test splits, under "test"); with `test` (the evaluate stage of `mtkd run`) the
    labelled test splits as well. Returns what metrics.json holds."""
    results: dict = {}
    dev_prefix = split if split.startswith("dev") else None
    test_prefix = split if split.startswith("test") else ("test" if test else None)
    tested: dict[str, dict[str, float]] = {}
    predicted: dict[str, dict] = {}  # report name -> the dev examples' ids, labels, predictions, groups
    unlabelled, absent = [], []  # test splits not scored, as "task/split"
    loaded: dict = {}

    def model_for(folder):  # loaded on first use; one model in memory at a time
        if folder not in loaded:
            loaded.clear()
            loaded[folder] = load_model(folder, data.specs, runner.device)
        return loaded[folder]

    for task, folder in models.items():
        if not data.specs[task].metrics:
            continue
        tokenizer = runner.stages.model_tokenizer(folder)
        model = functools.partial(model_for, folder)  # loaded only once a split is scored
        if dev_prefix is not None:
            _score_dev(data, runner, task, tokenizer, dev_prefix, model, results, predicted)
        if test_prefix is not None:
            tested.update(_score_tests(data, runner, task, tokenizer, test_prefix, model, unlabelled, absent))
    if runner.main and unlabelled:
        log.info("test splits without labels, not scored (unlabelled): %s", ", ".join(unlabelled))
    if runner.main and absent:
        log.info("test files not found, not scored: %s", ", ".join(absent))
    if test_prefix is not None and not test and not tested:
        raise ConfigError(f"--split {split!r}: no labelled split to score"
                          + "".join(f"; {what}: {', '.join(names)}" for what, names in
                                    (("without labels", unlabelled), ("file not found", absent)) if names))
    if tested:
        if TEST_RESULTS in results:
            raise ConfigError(f"a dev split is reported as {TEST_RESULTS!r}, the key metrics.json keeps test results "
                              f"under; give it another report_as")
        results[TEST_RESULTS] = tested
    if out is not None and runner.main:
        _write_results(data.specs, out, results, predicted, models, dev=dev_prefix is not None,
                       test=test_prefix is not None)
    if runner.main:  # each model folder's card gets the metrics it was scored with
        record_eval_metrics(data, models, results, runner.stages.model_tokenizer)
    return results


def _score_dev(data: TaskData, runner: Runner, task: str, tokenizer, prefix: str, model, results: dict,
               predicted: dict) -> None:
    """Each dev split of `task` starting with `prefix` (after dev_cap) into `results` (metrics) and
    `predicted` (per-example predictions); `model()` loads the model only when a split is scored."""
    spec = data.specs[task]
    names = {spec.report_name(s) for s in spec.eval_splits(prefix)}
    for name, (split, idx) in data.dev_sets(task, tokenizer).items():
        if name in names:
            groups = split.groups[idx] if split.groups is not None else None
            kind = kind_of(spec)
            pred = kind.predictions(runner.logits(model(), split, task, idx), groups)
            results[name] = kind.scores(split.labels[idx], pred, groups)
            predicted[name] = {"ids": [split.ids[i] for i in idx], "labels": split.labels[idx],
                               "predictions": pred, "groups": groups}


def _score_tests(data: TaskData, runner: Runner, task: str, tokenizer, prefix: str, model, unlabelled: list,
                 absent: list) -> dict:
    """{report name: metrics} of each labelled test split of `task` starting with `prefix`; the
    unlabelled ones and absent files are added to those lists (a malformed file is an error)."""
    spec = data.specs[task]
    tested = {}
    for s in spec.eval_splits(prefix):
        try:
            split = data.encoded(task, s, tokenizer)
        except DataError:
            if split_path(spec, s, data.cfg.data.root).is_file():
                raise  # a malformed test file is an error; an absent one is noted
            absent.append(f"{task}/{s}")
            continue
        if split.labels is None:
            unlabelled.append(f"{task}/{s}")
            continue
        tested[spec.report_name(s)] = kind_of(spec).score(runner.logits(model(), split, task), split.labels,
                                                          split.groups)
    return tested


def _write_results(specs: dict, out: Path, results: dict, predicted: dict, models: dict[str, Path],
                   dev: bool, test: bool) -> None:
    """DIR/metrics.json (merged with the previous file's other section), metrics.md, predictions.npz."""
    written = _merge_previous(out, results, models, dev=dev, test=test)
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(written, indent=2))
    notes = {t: s.note for t, s in specs.items() if s.note}
    (out / "metrics.md").write_text(markdown_table(written, notes, specs))
    if predicted:
        save_predictions(out / PREDICTIONS_FILE, predicted)


SOURCES_FILE = "metrics_sources.json"  # which model (weights sha256) each task's dev / test results came from


def _merge_previous(out: Path, results: dict, models: dict[str, Path], dev: bool, test: bool) -> dict:
    """What metrics.json becomes: `results`, plus the previous file's section that was not scored
    now (its dev results when only test splits were scored, and the other way round), kept only if
    those results came from the same models; otherwise that section is dropped, with a warning."""
    sources = {task: weights_sha256(folder) for task, folder in models.items()}
    sections = {"dev": dev, "test": test}
    previous_path, sources_path = out / "metrics.json", out / SOURCES_FILE
    merged, recorded = dict(results), {k: sources for k, scored in sections.items() if scored}
    if previous_path.is_file() and sources_path.is_file():
        previous = json.loads(previous_path.read_text())
        previous_sources = json.loads(sources_path.read_text())
        for section, scored in sections.items():
            if scored or section not in previous_sources:
                continue
            if previous_sources[section] != sources:
                log.warning("%s: dropping the earlier %s results (they came from other models)", previous_path, section)
                if section == "dev":
                    (out / PREDICTIONS_FILE).unlink(missing_ok=True)
                continue
            recorded[section] = sources
            if section == "test" and TEST_RESULTS in previous:
                merged[TEST_RESULTS] = previous[TEST_RESULTS]
            elif section == "dev":
                merged = {**{k: v for k, v in previous.items() if k != TEST_RESULTS}, **merged}
    out.mkdir(parents=True, exist_ok=True)
    sources_path.write_text(json.dumps(recorded, indent=2))
    return merged
