"""`mtkd export MODEL --output-dir DIR [--quantize int8]`: the encoder and every task head as one
ONNX graph, served by ONNX Runtime without PyTorch (`OnnxModel`).

The graph takes `input_ids` and `attention_mask` (and `token_type_ids` where the encoder embeds
token types: BERT, ELECTRA), int64 (batch, sequence) with both axes dynamic, and has one output per
head, named after its task: (batch, labels) logits for a classification head, the (batch,) score
for a regression or ranking head. Batches are padded on the right (as OnnxModel pads them). One
run answers every task; a task that predicts with another task's head (`head_of`: AX with MNLI's)
reads that head's output.

DIR holds `model.onnx` (the int8 graph when quantized; the fp32 graph it came from is not kept),
the tokenizer files and `mtkd_export.json`: the tasks (labels, head kind, max length), which output
answers each task, the inputs, the encoder's positions, the source model (folder and weights
sha256), the check made on export and, for int8, the dev metrics before and after.

Checked on export: ONNX Runtime and PyTorch run the same batches of real examples of varied length
(up to 8 per task from each task's dev file when the data is there, else built-in sentences), one
padded batch, length-sorted batches and single examples; the fp32 graph must match within
`ATOL` (max abs diff over every output) or nothing is written. `quantize="int8"`: ONNX Runtime's
dynamic quantization of the encoder's matrix multiplications (weights int8 per output channel in a
7-bit range, activations quantized per batch at run time; embeddings and heads stay fp32), then each
task's dev metric from PyTorch fp32 and from the int8 graph, and the speed ratio on those dev texts.

The graph is first fused with ONNX Runtime's transformer optimizer (attention, layer norm, GELU into
single operators) where the optimizer knows the family; a fused graph that does not pass the same
check is dropped for the plain one.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mtkd import inference
from mtkd.errors import ConfigError, ExportError
from mtkd.heads import kind_of
from mtkd.onnx_model import (
    EXPORT_FILE,
    FORMAT,
    FORMAT_VERSION,
    GRAPH_FILE,
    INSTALL_HINT,
    OnnxModel,
    is_export,
    open_session,
)
from mtkd.tasks import TaskSpec

log = logging.getLogger(__name__)

OPSET = 17
ATOL = 1e-4  # max abs diff allowed between the fp32 graph and PyTorch, on logits and scores
EXPORTERS = ("torchscript", "dynamo")
QUANTIZATIONS = ("int8",)
DEFAULT_DEV_CAP = 1000  # dev examples per split for the int8 before/after metrics
# the ONNX Runtime transformer optimizer's BERT fusions also fit these families' graphs (the check decides)
FUSABLE = ("bert", "roberta", "distilbert", "electra", "xlm-roberta", "camembert")
VERIFY_PER_TASK = 8

# built-in examples for the export check when no dev file is found: lengths from 1 word to ~150 tokens
BUILTIN_TEXTS = [
    "fine",
    "a gripping , funny film",
    "the plot was dull and the cast was poor .",
    "He said the movie was good, and she said it was not; they argued for an hour about the ending.",
    "A man plays a flute on the street while a crowd gathers, and a child dances beside him in the sun.",
    " ".join(["the story moves slowly but the acting is superb and the music carries every scene"] * 9),
]
BUILTIN_PAIRS = [
    "good",
    "the film is funny",
    "the cast was great .",
    "They agreed about the ending.",
    "A man plays music.",
    "the acting is bad",
]


def _require_export_stack(exporter: str):
    try:
        import onnx  # noqa: F401  (the ONNX model format, for quantization and checks)
        import onnxruntime  # noqa: F401

        if exporter == "dynamo":
            import onnxscript  # noqa: F401  (the dynamo exporter writes through it)
    except ImportError as e:
        raise ConfigError(
            f"mtkd export needs onnx, onnxruntime (and onnxscript for --exporter dynamo): {INSTALL_HINT} ({e})"
        ) from None


# ------------------------------------------------------------------------------------- export
def _head_outputs(model) -> list[str]:
    """The heads in graph output order (the model's head order); one output per head."""
    return list(model.heads)


def _wrapper(model, heads: list[str]):
    import torch

    class AllHeads(torch.nn.Module):
        """Encoder once, then every head: (B, C) logits, or the (B,) score of a one-output head."""

        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            cls_vec = self.model.encode(input_ids, attention_mask, token_type_ids)
            return tuple(kind_of(self.model.tasks[h]).graph_output(self.model.heads[h](cls_vec)) for h in heads)

    return AllHeads().eval()


def _verification_examples(model, data_root, per_task: int = VERIFY_PER_TASK) -> tuple[list, str]:
    """[(text, pair or None)] of varied length: up to `per_task` examples of each task's first dev
    split spread from its shortest to its longest (by characters), when the file is found; else the
    built-in sentences (with pairs when a task is a pair task). Also says where they came from."""
    from mtkd.data import read_split, split_path
    from mtkd.errors import DataError

    examples, found = [], []
    for name, spec in model.tasks.items():
        dev = spec.eval_splits("dev")
        if not dev:
            continue
        try:
            raw = read_split(spec, dev[0], data_root)
        except DataError:
            if split_path(spec, dev[0], data_root).is_file():
                raise  # a malformed dev file is an error (naming file and line); an absent one is skipped
            continue
        pairs = raw.text_b
        size = [len(a) + (len(pairs[i]) if pairs is not None else 0) for i, a in enumerate(raw.text_a)]
        order = np.argsort(size, kind="stable")
        pick = sorted(
            set(order[np.linspace(0, len(order) - 1, min(per_task, len(order))).round().astype(int)].tolist())
        )
        examples += [(raw.text_a[i], pairs[i] if pairs is not None else None) for i in pick]
        found.append(f"{name}/{dev[0]}")
    if examples:
        return examples, "dev examples of " + ", ".join(found)
    pair_task = any("text_b" in s.fields for s in model.tasks.values())
    single_task = any("text_b" not in s.fields for s in model.tasks.values())
    out = [(t, None) for t in BUILTIN_TEXTS] if single_task or not pair_task else []
    out += [(t, p) for t, p in zip(BUILTIN_TEXTS, BUILTIN_PAIRS, strict=False)] if pair_task else []
    return out, "built-in sentences (no dev file found)"


def _encode_examples(tokenizer, examples, max_len: int):
    """Token rows and token type rows (or None) of [(text, pair or None)], cut at max_len."""
    rows, types = [None] * len(examples), [None] * len(examples)
    has_types = False
    for paired in (False, True):
        idx = [i for i, (_, p) in enumerate(examples) if (p is not None) == paired]
        if not idx:
            continue
        r, t, _ = inference.tokenize(
            tokenizer, [examples[i][0] for i in idx], [examples[i][1] for i in idx] if paired else None, max_len
        )
        for j, i in enumerate(idx):
            rows[i] = r[j]
            types[i] = t[j] if t is not None else [0] * len(r[j])
        has_types = has_types or t is not None
    return rows, types if has_types else None


def _check_batches(rows, types, pad_id: int) -> list[tuple]:
    """The batches the export is checked on: all examples in one padded batch (lots of padding),
    length-sorted batches of 4, and the shortest and the longest example alone."""
    n = len(rows)
    lengths = [len(r) for r in rows]
    sels = [np.arange(n)] + inference.length_batches(lengths, 4)
    sels += [np.array([int(np.argmin(lengths))]), np.array([int(np.argmax(lengths))])]
    return [
        inference.pad_rows([rows[i] for i in sel], [types[i] for i in sel] if types is not None else None, pad_id)
        for sel in sels
    ]


def _feed(batch, input_names):
    ids, mask, tt = batch
    feed = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in input_names:
        feed["token_type_ids"] = tt if tt is not None else np.zeros_like(ids)
    return feed


def max_abs_diff(session, reference: list[list[np.ndarray]], batches, heads: list[str]) -> float:
    """Largest |ONNX - PyTorch| over every output of every batch."""
    worst = 0.0
    names = [i.name for i in session.get_inputs()]
    for batch, ref in zip(batches, reference, strict=False):
        got = session.run(heads, _feed(batch, names))
        for g, r in zip(got, ref, strict=False):
            if g.shape != r.shape:
                raise ExportError(f"the ONNX graph's output has shape {g.shape}, PyTorch's {r.shape}")
            worst = max(worst, float(np.max(np.abs(g.astype(np.float32) - r))) if r.size else 0.0)
    return worst


def _export_graph(
    wrapper, example, input_names: list[str], heads: list[str], path: Path, exporter: str, opset: int
) -> None:
    import torch

    args = tuple(torch.from_numpy(a) for a in example)
    axes = {n: {0: "batch", 1: "sequence"} for n in input_names}
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            names = {"input_names": input_names, "output_names": heads}
            if exporter == "dynamo":
                batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
                shapes = {n: {0: batch, 1: seq} for n in input_names}
                torch.onnx.export(
                    wrapper,
                    args,
                    str(path),
                    **names,
                    dynamic_shapes=shapes,
                    opset_version=max(opset, 18),
                    dynamo=True,
                    external_data=False,
                )
            else:
                axes = {**axes, **{h: {0: "batch"} for h in heads}}
                torch.onnx.export(
                    wrapper,
                    args,
                    str(path),
                    **names,
                    dynamic_axes=axes,
                    opset_version=opset,
                    dynamo=False,
                    do_constant_folding=True,
                )
    except Exception as e:
        log.debug("exporter output:\n%s", sink.getvalue())
        raise ExportError(
            f"the {exporter} exporter failed on this encoder ({type(e).__name__}: {inference.first_line(e)}); "
            f"try --exporter {_other_exporter(exporter)}"
        ) from None
    log.debug("exporter output:\n%s", sink.getvalue())


@contextlib.contextmanager
def _quiet():
    """ONNX Runtime's optimizer and quantizer talk on stdout, in warnings and through logging
    (INFO per fusion, a WARNING hint to pre-process): none of it is the user's business here."""
    level = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(level)


def _set_attention(model, name: str) -> bool:
    try:
        model.encoder.set_attn_implementation(name)
        return True
    except Exception as e:  # a family without it keeps its own attention
        log.debug("attention %r not available (%s)", name, e)
        return False


def _fuse(src: Path, dst: Path, encoder_config) -> dict | None:
    """ONNX Runtime's transformer optimizer on the graph (attention, layer norm, GELU fused); the
    fused operators' counts, or None when it does not apply or fails."""
    if getattr(encoder_config, "model_type", None) not in FUSABLE:
        return None
    try:
        from onnxruntime.transformers import optimizer

        heads = getattr(encoder_config, "num_attention_heads", None) or getattr(encoder_config, "n_heads", 0)
        hidden = getattr(encoder_config, "hidden_size", None) or getattr(encoder_config, "dim", 0)
        with _quiet():
            opt = optimizer.optimize_model(
                str(src), model_type="bert", num_heads=int(heads or 0), hidden_size=int(hidden or 0)
            )
            fused = {k: v for k, v in opt.get_fused_operator_statistics().items() if v}
            opt.save_model_to_file(str(dst))
        return fused
    except Exception as e:  # the optimizer is best effort: the plain graph is kept
        log.info(
            "ONNX Runtime's transformer optimizer did not apply (%s: %s); keeping the plain graph", type(e).__name__, e
        )
        return None


INT8_SETTINGS = {
    "method": "onnxruntime dynamic quantization",
    "ops": ["MatMul", "Attention"],
    "weights": "int8, per output channel, 7-bit range (reduce_range)",
    "activations": "uint8, per batch",
    "fp32": "embeddings (Gather), layer norms, softmax, the heads (Gemm)",
}


def _quantize_int8(src: Path, dst: Path) -> None:
    """Dynamic int8 (INT8_SETTINGS): the weights of MatMul and fused Attention int8 per output
    channel, activations quantized per batch at run time; embeddings and the heads stay fp32.
    Weights use 7 bits of range (reduce_range): on CPUs without VNNI (AVX2 only) ONNX Runtime's
    u8 x s8 kernels add pairs of products in 16 bits, which 8-bit weights can overflow (the measured
    dev metric losses of each setting: benchmarks/README.md, "Measurements behind the code")."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet():
        quantize_dynamic(
            str(src),
            str(dst),
            op_types_to_quantize=INT8_SETTINGS["ops"],
            per_channel=True,
            reduce_range=True,
            weight_type=QuantType.QInt8,
            extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
        )  # fused ops carry no type


def dev_sets(specs: dict[str, TaskSpec], data_root, cap: int | None, seed: int = 0) -> dict[str, dict]:
    """{report name: {"task", "split", "texts", "pairs", "labels", "groups", "total"}} of every
    labelled dev split of `specs` found under `data_root`, `cap` examples each (a seeded sample;
    None: all), for before/after metrics."""
    from mtkd.data import read_split, split_path, subsample
    from mtkd.errors import DataError

    out = {}
    for name, spec in specs.items():
        for split in spec.eval_splits("dev"):
            try:
                raw = read_split(spec, split, data_root)
            except DataError as e:
                if split_path(spec, split, data_root).is_file():
                    raise
                log.info("%s/%s: no dev metrics (%s)", name, split, e)
                continue
            if raw.labels is None or not len(raw):
                continue
            idx = subsample(len(raw), cap, seed)
            kind = kind_of(spec)
            out[spec.report_name(split)] = {
                "task": name,
                "split": split,
                "texts": [raw.text_a[i] for i in idx],
                "pairs": [raw.text_b[i] for i in idx] if raw.text_b is not None else None,
                "labels": np.asarray([raw.labels[i] for i in idx], dtype=kind.label_dtype),
                "groups": kind.groups([raw.text_a[i] for i in idx]),
                "total": len(raw),
            }
    return out


def dev_scores(
    tokenizer,
    run_batch,
    specs: dict[str, TaskSpec],
    dev: dict[str, dict],
    max_positions: int | None,
    batch_size: int = 64,
    max_tokens: int | None = 8192,
) -> dict[str, dict[str, float]]:
    """{report name: metrics x100} of one model (`run_batch`, as mtkd.inference calls it) on `dev_sets`,
    each split cut at its task's trained length, in predict's length-sorted batches."""
    out = {}
    for report, d in dev.items():
        spec = specs[d["task"]]
        n = inference.served_max_len(spec, max_positions)
        logits = inference.text_logits(
            tokenizer, run_batch, specs, [d["task"]], d["texts"], d["pairs"], n, batch_size, max_tokens
        )[0][d["task"]]
        out[report] = kind_of(spec).score(logits, d["labels"], d["groups"])
    return out


class Timed:
    """A `run_batch` that adds up the seconds spent in the model and the examples it ran."""

    def __init__(self, fn):
        self.fn, self.seconds, self.examples = fn, 0.0, 0

    def __call__(self, names, ids, mask, types):
        t0 = time.perf_counter()
        out = self.fn(names, ids, mask, types)
        self.seconds += time.perf_counter() - t0
        self.examples += len(ids)
        return out

    @property
    def examples_per_s(self) -> float:
        return self.examples / max(self.seconds, 1e-9)


def _compare_int8(model, onnx_model, dev: dict[str, dict], fallback_texts: list[str]) -> dict:
    """Dev metrics of PyTorch fp32 and of the int8 graph, and both speeds (model time only: the
    same tokenised, length-sorted batches go to both); without dev sets, speeds on `fallback_texts`."""
    torch_run, onnx_run = Timed(model.run_batch), Timed(onnx_model.run_batch)
    results = {}
    if dev:
        before = dev_scores(model.tokenizer, torch_run, model.tasks, dev, onnx_model.max_positions)
        after = dev_scores(model.tokenizer, onnx_run, model.tasks, dev, onnx_model.max_positions)
        results = {
            r: {
                "task": d["task"],
                "split": d["split"],
                "examples": len(d["texts"]),
                "of": d["total"],
                "pytorch_fp32": before[r],
                "onnx": after[r],
            }
            for r, d in dev.items()
        }
    else:
        task = next(iter(model.tasks))
        pairs = fallback_texts if "text_b" in model.tasks[task].fields else None
        for _ in range(4):
            for run in (torch_run, onnx_run):
                inference.text_logits(model.tokenizer, run, model.tasks, [task], fallback_texts, pairs, 128, 64, 8192)
    speed = {"pytorch_fp32_examples_per_s": torch_run.examples_per_s, "onnx_examples_per_s": onnx_run.examples_per_s}
    speed["ratio"] = speed["onnx_examples_per_s"] / speed["pytorch_fp32_examples_per_s"]
    return {"dev": results, "speed": speed}


def _prepare_out_dir(out_dir: Path, model_folder: Path) -> None:
    if out_dir.resolve() == model_folder.resolve():
        raise ConfigError(f"--output-dir {out_dir} is the model folder itself; export into another folder")
    if out_dir.exists():
        if not out_dir.is_dir():
            raise ConfigError(f"--output-dir {out_dir} is a file, not a folder")
        if any(out_dir.iterdir()) and not is_export(out_dir):
            raise ConfigError(
                f"--output-dir {out_dir} is not empty and holds no earlier export ({EXPORT_FILE}); "
                f"export into a new or empty folder"
            )


def _replace_folder(tmp: Path, out_dir: Path) -> None:
    """tmp becomes out_dir; an earlier export there is removed once the new one is in place."""
    old = None
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _checked_diff(graph: Path, reference, batches, heads, what: str) -> float:
    """max_abs_diff of a graph file against PyTorch; ONNX Runtime failing to load or run it is an
    ExportError naming the graph (not a bare onnxruntime exception)."""
    try:
        return max_abs_diff(open_session(graph), reference, batches, heads)
    except ExportError:
        raise
    except Exception as e:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
        raise ExportError(f"{what} ({graph.name}) does not run in ONNX Runtime: {inference.first_line(e)}") from None


def _other_exporter(exporter: str) -> str:
    return "dynamo" if exporter == "torchscript" else "torchscript"


def _graph_opset(exporter: str, opset: int) -> int:
    """The opset the graph is written in: the dynamo exporter writes 18 or later."""
    return opset if exporter == "torchscript" else max(opset, 18)


def _check_export_args(quantize: str | None, exporter: str, dev_cap: int | None) -> None:
    if quantize not in (None, *QUANTIZATIONS):
        raise ConfigError(f"--quantize {quantize!r}: expected one of {list(QUANTIZATIONS)}")
    if exporter not in EXPORTERS:
        raise ConfigError(f"--exporter {exporter!r}: expected one of {list(EXPORTERS)}")
    if dev_cap is not None and dev_cap < 1:
        raise ConfigError(f"--dev-cap must be >= 1, got {dev_cap}")
    _require_export_stack(exporter)


@dataclass
class _ExportCheck:
    """What the export is checked on: the examples (and where they came from), their token rows, the
    padded batches (with token types where the graph takes them) and PyTorch's outputs on each batch
    in the graph's output layout."""

    examples: list
    source: str
    rows: list
    batches: list[tuple]
    reference: list[list[np.ndarray]]

    def diff(self, graph: Path, heads: list[str], what: str) -> float:
        return _checked_diff(graph, self.reference, self.batches, heads, what)


def _prepare_check(model, root: Path, limit: int | None, heads: list[str]) -> _ExportCheck:
    """The check's examples, cut at the longest trained length (at most the encoder's positions),
    batched as _check_batches does, and PyTorch's outputs on them (_reference_outputs)."""
    examples, source = _verification_examples(model, root)
    cut = max(inference.served_max_len(s, limit) for s in model.tasks.values())
    rows, types = _encode_examples(model.tokenizer, examples, cut)
    batches = _check_batches(rows, types, inference.pad_token_id(model.tokenizer))
    if model.use_token_types:
        batches = [(i, m, t if t is not None else np.zeros_like(i)) for i, m, t in batches]
    return _ExportCheck(examples, source, rows, batches, _reference_outputs(model, heads, batches))


def _reference_outputs(model, heads: list[str], batches) -> list[list[np.ndarray]]:
    """PyTorch's outputs on each batch, computed as predict computes them (MTModel.run_batch, the
    same runner the int8 comparison times), laid out as the graph's: per head, in head order, (B, C)
    logits or the (B,) score of a one-output head. Every head is named after its own task."""
    run = model.run_batch
    out = []
    for ids, mask, types in batches:
        got = run(heads, ids, mask, types)
        out.append([kind_of(model.tasks[h]).graph_output(got[h]) for h in heads])
    return out


def _plain_and_fused(
    model,
    check: _ExportCheck,
    input_names: list[str],
    heads: list[str],
    tmp: Path,
    exporter: str,
    opset: int,
    atol: float,
    optimize: bool,
    echo,
) -> tuple[Path, float, dict | None]:
    """Export the plain graph and, with `optimize`, try ONNX Runtime's fusions on it: (the graph that
    goes on, its max abs diff from PyTorch, the fused operators' counts or None). The fused graph is
    kept only when it runs and stays within `atol`; the plain graph's diff is not judged here."""
    config, plain = model.encoder.config, tmp / "plain.onnx"
    # traced on the one padded batch of every example (varied lengths: the mask is in the graph), with
    # eager attention where the encoder has it: the pattern ONNX Runtime fuses (the same numbers as SDPA)
    attn = getattr(config, "_attn_implementation", None)
    eager = optimize and attn not in (None, "eager") and _set_attention(model, "eager")
    try:
        _export_graph(
            _wrapper(model, heads), check.batches[0][: len(input_names)], input_names, heads, plain, exporter, opset
        )
    finally:
        if eager:
            _set_attention(model, attn)
    diff = check.diff(plain, heads, "the exported graph")
    if not optimize:
        return plain, diff, None
    fused_path = tmp / "fused.onnx"
    fused = _fuse(plain, fused_path, config)
    if fused is None:
        return plain, diff, None
    try:
        fused_diff = check.diff(fused_path, heads, "the fused graph")
    except ExportError as e:  # the optimizer's graph is optional: keep the plain one
        echo(f"{e}: keeping the plain graph")
        return plain, diff, None
    if fused_diff <= atol:
        return fused_path, fused_diff, fused
    echo(f"fused graph differs from PyTorch by {fused_diff:.2e} (> {atol:g}): keeping the plain graph")
    return plain, diff, None


def _fp32_graph(model, check, input_names, heads, tmp, exporter, opset, atol, optimize, echo):
    """The fp32 graph (_plain_and_fused, same arguments) and its check: (the graph, the check record
    of mtkd_export.json, the fused operators' counts or None); ExportError past `atol`."""
    graph, diff, fused = _plain_and_fused(model, check, input_names, heads, tmp, exporter, opset, atol, optimize, echo)
    n_ex, rows, where = len(check.examples), check.rows, check.source
    echo(
        f"check: ONNX Runtime fp32 vs PyTorch on {n_ex} {where} ({len(check.batches)} batches, lengths "
        f"{min(map(len, rows))}-{max(map(len, rows))} tokens): max abs diff {diff:.2e} (allowed {atol:g})"
    )
    if not diff <= atol:
        raise ExportError(
            f"the exported graph's outputs differ from PyTorch's by {diff:.3g} (more than {atol:g}) "
            f"on {n_ex} {where}; nothing was written (try --exporter {_other_exporter(exporter)})"
        )
    return (
        graph,
        {"max_abs_diff_fp32": diff, "atol": atol, "examples": n_ex, "source": where, "batches": len(check.batches)},
        fused,
    )


def _export_meta(
    model,
    model_folder: Path,
    quantize: str | None,
    input_names: list[str],
    heads: list[str],
    exporter: str,
    opset: int,
    fused: dict | None,
    check_record: dict,
    limit: int | None,
) -> dict:
    """mtkd_export.json's fields known once the graph is checked (the graph's digest, the int8
    report and the seconds are added after)."""
    from mtkd.model import weights_sha256

    config = model.encoder.config
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "encoder_name": model.encoder_name,
        "encoder_type": config.model_type,
        "source": {"model": str(model_folder.resolve()), "weights_sha256": weights_sha256(model_folder)},
        "quantization": quantize,
        "quantization_settings": INT8_SETTINGS if quantize == "int8" else None,
        "inputs": input_names,
        "outputs": {t: s.head_name for t, s in model.tasks.items()},
        "output_shapes": {h: kind_of(model.tasks[h]).graph_shape() for h in heads},
        "tasks": {n: s.to_dict() for n, s in model.tasks.items()},
        "use_token_types": bool(model.use_token_types),
        "max_positions": limit,
        "padding": "right: attention_mask 1 on the tokens, then 0 (the fused attention reads lengths from it)",
        "exporter": exporter,
        "opset": _graph_opset(exporter, opset),
        "fused": fused or {},
        "check": check_record,
        "versions": _versions(),
    }


def _final_graph(
    graph: Path, final: Path, quantize: str | None, check: _ExportCheck, heads: list[str], echo
) -> float | None:
    """The checked fp32 graph becomes `final`, quantized to int8 when asked (then checked too: its max
    abs diff from PyTorch is returned, recorded, not judged); the intermediate graphs are removed."""
    int8_diff = None
    if quantize == "int8":
        echo("quantizing to int8 (dynamic: MatMul/Attention weights int8 per channel, activations per batch)")
        _quantize_int8(graph, final)
        int8_diff = check.diff(final, heads, "the int8 graph")
    else:
        graph.rename(final)
    for f in (final.parent / "plain.onnx", final.parent / "fused.onnx"):
        f.unlink(missing_ok=True)
    return int8_diff


def _int8_report(model, folder: Path, root: Path, dev_cap: int | None, check: _ExportCheck, echo) -> dict:
    """_compare_int8 of PyTorch fp32 and the int8 export in `folder`, each line of it echoed."""
    dev = dev_sets(model.tasks, root, dev_cap)
    report = _compare_int8(model, OnnxModel.from_pretrained(folder), dev, [t for t, _ in check.examples] * 8)
    for name, r in report["dev"].items():
        before, after = r["pytorch_fp32"], r["onnx"]
        cells = ", ".join(f"{m} {before[m]:.2f} -> {after[m]:.2f} ({after[m] - before[m]:+.2f})" for m in before)
        echo(f"dev {name} ({r['examples']} of {r['of']} examples): {cells}")
    if not dev:
        echo(f"no labelled dev files found under {root} (set --data-root): dev metrics not measured")
    speed = report["speed"]
    echo(
        f"speed on the {'dev texts' if dev else 'built-in sentences'}: int8 ONNX {speed['onnx_examples_per_s']:.1f} "
        f"examples/s, PyTorch fp32 {speed['pytorch_fp32_examples_per_s']:.1f} examples/s: {speed['ratio']:.2f}x"
    )
    return report


def export_onnx(
    model_folder: str | Path,
    out_dir: str | Path,
    quantize: str | None = None,
    data_root: str | Path | None = None,
    dev_cap: int | None = DEFAULT_DEV_CAP,
    exporter: str = "torchscript",
    optimize: bool = True,
    opset: int = OPSET,
    atol: float = ATOL,
    compare: bool = True,
    echo: Callable[[str], None] = log.info,
) -> dict:
    """Export a saved mtkd model folder (MTModel.save_pretrained) to `out_dir` (module docstring).

    `quantize`: None (fp32) or "int8". `data_root`: the GLUE/task data root the tasks' relative
    paths start from (default: $MTKD_DATA_ROOT, else ../shared/data/glue), for the check's examples
    and the int8 dev metrics (`dev_cap` examples per dev split; None: all). `exporter`:
    "torchscript" (default) or "dynamo" (torch.export). `optimize`: try ONNX Runtime's transformer
    fusions. `compare` (int8): measure the dev metrics before and after and the speed ratio (False:
    only the check on the export's examples). Progress lines go to `echo`. Returns what
    mtkd_export.json records.

    Raises the model loader's CheckpointError for a damaged folder, ConfigError for bad arguments
    or a missing onnx/onnxruntime, ExportError when the exporter fails or the graph does not match
    PyTorch within `atol`; nothing is left in `out_dir` then."""
    from mtkd.data import resolve_data_root
    from mtkd.encoders import max_positions
    from mtkd.files import file_digest
    from mtkd.model import MTModel

    _check_export_args(quantize, exporter, dev_cap)
    model_folder, out_dir = Path(model_folder), Path(out_dir)
    _prepare_out_dir(out_dir, model_folder)
    model = MTModel.from_pretrained(model_folder).eval()  # a damaged folder: the loader's own error
    root = resolve_data_root(data_root)
    limit = max_positions(model.encoder.config)
    heads = _head_outputs(model)
    input_names = ["input_ids", "attention_mask"] + (["token_type_ids"] if model.use_token_types else [])
    t_start = time.perf_counter()
    check = _prepare_check(model, root, limit, heads)  # the check's batches and PyTorch's answers on them

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        echo(
            f"exporting {model_folder} ({model.encoder.config.model_type}, {len(heads)} heads: {', '.join(heads)}) "
            f"with the {exporter} exporter, opset {_graph_opset(exporter, opset)}"
        )
        graph, check_record, fused = _fp32_graph(
            model, check, input_names, heads, tmp, exporter, opset, atol, optimize, echo
        )
        meta = _export_meta(
            model, model_folder, quantize, input_names, heads, exporter, opset, fused, check_record, limit
        )
        final = tmp / GRAPH_FILE
        int8_diff = _final_graph(graph, final, quantize, check, heads, echo)
        if int8_diff is not None:
            meta["check"]["max_abs_diff_int8"] = int8_diff
        model.tokenizer.save_pretrained(str(tmp))
        meta["graph"] = {"file": GRAPH_FILE, **file_digest(final)}
        (tmp / EXPORT_FILE).write_text(json.dumps(meta, indent=2))  # OnnxModel reads it for the int8 comparison
        if quantize == "int8" and compare:
            meta["int8"] = _int8_report(model, tmp, root, dev_cap, check, echo)
        meta["seconds"] = round(time.perf_counter() - t_start, 1)
        (tmp / EXPORT_FILE).write_text(json.dumps(meta, indent=2))
        _replace_folder(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    echo(
        f"wrote {out_dir}: {GRAPH_FILE} ({meta['graph']['size'] / 2**20:.1f} MB{', int8' if quantize else ''}), "
        f"tokenizer, {EXPORT_FILE} ({len(model.tasks)} tasks)"
    )
    return meta


def _versions() -> dict:
    import onnx
    import onnxruntime
    import torch
    import transformers

    from mtkd import __version__

    return {
        "mtkd": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
    }
