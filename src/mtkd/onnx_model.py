"""An `mtkd export` folder served by ONNX Runtime, without PyTorch: `OnnxModel` has the `.tasks`,
`.tokenizer` and `.predict` of `MTModel` (the same prediction side, mtkd.inference), `mtkd serve`
loads it. The folder (written by mtkd.export) holds `model.onnx`, the tokenizer files and
`mtkd_export.json`: the tasks, which graph output answers each task, the inputs, the encoder's
positions, the source model and the check made on export.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from mtkd import inference
from mtkd.errors import CheckpointError, ConfigError
from mtkd.tasks import TaskSpec, task_from_dict

EXPORT_FILE = "mtkd_export.json"
GRAPH_FILE = "model.onnx"
FORMAT = "mtkd-onnx"
FORMAT_VERSION = 1
INSTALL_HINT = "pip install 'mtkd[onnx]'"


def require_onnxruntime():
    """The onnxruntime module, or a ConfigError saying how to install it."""
    try:
        import onnxruntime
    except ImportError as e:
        raise ConfigError(f"ONNX needs onnxruntime: {INSTALL_HINT} ({e})") from None
    return onnxruntime


def _read_export_meta(folder: Path) -> tuple[dict, dict[str, TaskSpec]]:
    """An export folder's mtkd_export.json, checked (format, version, tasks, outputs), and its tasks."""
    meta_path = folder / EXPORT_FILE
    if not meta_path.is_file():
        raise CheckpointError(
            f"{folder}: not an mtkd ONNX export (no {EXPORT_FILE}; `mtkd export MODEL --output-dir DIR` writes one)"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{meta_path}: unreadable ({e}); the export is damaged (export again)") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else meta
        raise CheckpointError(f"{meta_path}: field 'format' is {got!r}, expected {FORMAT!r}")
    if not isinstance(meta.get("format_version"), int) or meta["format_version"] > FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path}: format_version {meta.get('format_version')!r}; this mtkd reads "
            f"up to {FORMAT_VERSION} (a newer mtkd wrote it)"
        )
    for key in ("tasks", "outputs"):
        if not isinstance(meta.get(key), dict) or not meta[key]:
            raise CheckpointError(f"{meta_path}: field {key!r} is missing; the export is damaged")
    tasks = {n: task_from_dict(n, d, str(meta_path)) for n, d in meta["tasks"].items()}
    if set(meta["outputs"]) != set(tasks):
        raise CheckpointError(
            f"{meta_path}: 'outputs' names tasks {sorted(meta['outputs'])}, 'tasks' has {sorted(tasks)}"
        )
    return meta, tasks


# ------------------------------------------------------------------------------------- serving
def open_session(path: Path, threads: int | None = None, providers: Sequence[str] | None = None):
    """An ONNX Runtime session on `path` (default: the CPU provider, ONNX Runtime's own thread count)."""
    ort = require_onnxruntime()
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    return ort.InferenceSession(str(path), options, providers=list(providers or ["CPUExecutionProvider"]))


class OnnxModel:
    """An `mtkd export` folder run by ONNX Runtime: `.tasks` ({name: TaskSpec}), `.tokenizer` (fast)
    and `.predict` with the semantics and return types of `MTModel.predict`. No PyTorch needed."""

    def __init__(self, folder: Path, session, tokenizer, meta: dict, tasks: dict[str, TaskSpec]):
        self.folder = Path(folder)
        self.session = session
        self.tokenizer = tokenizer
        self.meta = meta
        self.tasks = tasks
        self.outputs: dict[str, str] = dict(meta["outputs"])  # task -> output name
        self.input_names = [i.name for i in session.get_inputs()]
        self.use_token_types = "token_type_ids" in self.input_names
        self.max_positions: int | None = meta.get("max_positions")
        self.encoder_name = meta.get("encoder_name", "")
        self.quantization: str | None = meta.get("quantization")

    @classmethod
    def from_pretrained(
        cls, folder: str | Path, threads: int | None = None, providers: Sequence[str] | None = None
    ) -> OnnxModel:
        """Load an export folder. `threads`: ONNX Runtime's intra-op threads (default: its own, one
        per physical core). Refuses (CheckpointError, naming the file) a folder without
        mtkd_export.json, another format, a missing or changed graph, unreadable tokenizer files."""
        folder = Path(folder)
        meta, tasks = _read_export_meta(folder)
        graph = folder / GRAPH_FILE
        if not graph.is_file():
            raise CheckpointError(f"{graph}: missing; the export is damaged (export again)")
        want = (meta.get("graph") or {}).get("size")
        if want is not None and graph.stat().st_size != want:
            raise CheckpointError(
                f"{graph}: {graph.stat().st_size} bytes, {want} were written (truncated or overwritten); export again"
            )
        require_onnxruntime()  # its absence is a ConfigError (how to install), not a damaged export
        try:
            session = open_session(graph, threads, providers)
        except Exception as e:  # onnxruntime raises its own exception types (InvalidProtobuf, Fail, ...)
            raise CheckpointError(f"{graph}: ONNX Runtime cannot load it ({inference.first_line(e)})") from None
        names = {o.name for o in session.get_outputs()}
        missing = sorted(set(meta["outputs"].values()) - names)
        if missing:
            raise CheckpointError(
                f"{graph}: no output {', '.join(missing)} (its outputs: {sorted(names)}); "
                f"{EXPORT_FILE} does not belong to this graph"
            )
        return cls(folder, session, inference.load_tokenizer(folder), meta, tasks)

    def run_batch(
        self, names: Sequence[str], ids: np.ndarray, mask: np.ndarray, types: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """One graph run on a padded int64 batch: {task: (B, C) logits; (B, 1) for a score}."""
        feed = {"input_ids": ids, "attention_mask": mask}
        if self.use_token_types:
            feed["token_type_ids"] = types if types is not None else np.zeros_like(ids)
        wanted = list(dict.fromkeys(self.outputs[t] for t in names))
        got = dict(zip(wanted, self.session.run(wanted, feed), strict=False))
        return {t: got[self.outputs[t]].reshape(len(ids), -1) for t in names}

    def train_max_len(self, task: str) -> int:
        return inference.train_max_len(self.tasks[task])

    def predict(
        self, tasks: str | Sequence[str], texts: Sequence[str], text_pairs: Sequence[str] | None = None, **options
    ):
        """As `MTModel.predict`, with its options (batch_size, max_len, return_probs, max_tokens,
        as_json): length-sorted batches, input order kept, inputs cut at each task's trained length
        (at most the encoder's positions). One task -> a list (labels, clipped regression scores,
        ranking scores; (N, C) probabilities with return_probs), several -> {task: list}."""
        return inference.predict(self, tasks, texts, text_pairs, max_positions=self.max_positions, **options)


def is_export(folder: str | Path) -> bool:
    return (Path(folder) / EXPORT_FILE).is_file()
