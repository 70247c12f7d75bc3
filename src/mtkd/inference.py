"""The prediction side: texts -> token rows -> length-sorted, padded batches -> logits -> answers.

Shared by every way a model predicts: `MTModel.predict` and `OnnxModel.predict`, `mtkd predict`,
`mtkd serve`, evaluation and the teachers' soft targets (`mtkd.loop.predict_logits`), the ONNX
export's checks. Padding happens here (training batches too: `mtkd.data.collate`); turning logits
into answers is each head kind's (`mtkd.heads`). No torch here: a model is a function
`run_batch(tasks, input_ids, attention_mask, token_type_ids) -> {task: (B, C) logits}` on numpy
arrays, so an ONNX export serves without PyTorch installed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np

from mtkd.errors import CheckpointError
from mtkd.heads import kind_of
from mtkd.tasks import TaskSpec

DEFAULT_MAX_LEN = 512  # a task defined without a max_seq_len is trained at data.max_seq_len's default

# run_batch(task names, input_ids (B, L), attention_mask (B, L), token_type_ids (B, L) or None) -> {task: (B, C)}
RunBatch = Callable[[list, np.ndarray, np.ndarray, "np.ndarray | None"], Mapping[str, np.ndarray]]


def load_tokenizer(folder):
    """The fast tokenizer saved in a model or export folder; CheckpointError naming the folder when
    its files are missing or unreadable."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), use_fast=True)
    except Exception as e:  # OSError (no files), ValueError, or the tokenizers library's bare Exception (bad JSON)
        raise CheckpointError(f"{folder}: the tokenizer files are missing or unreadable ({first_line(e)})") from None


def first_line(e: Exception) -> str:
    """An exception's first message line (ONNX Runtime's, the exporters' and the tokenizers' run on
    for pages), else its type."""
    return str(e).splitlines()[0] if str(e) else type(e).__name__


def pad_token_id(tokenizer) -> int:
    """The id batches are padded with: the tokenizer's pad token (RoBERTa 1, ModernBERT 50283, BERT 0),
    0 for a tokenizer without one. Padded positions are masked out, but RoBERTa-style encoders also
    derive position ids from it."""
    pad = getattr(tokenizer, "pad_token_id", None)
    return int(pad) if pad is not None else 0


# ------------------------------------------------------------------------------------- lengths
def train_max_len(spec: TaskSpec) -> int:
    """The length a task was trained at: its training split's max_seq_len, else the task's (every
    mtkd run saves it with the model), else 512."""
    return spec.max_len_for("train", spec.max_seq_len if spec.max_seq_len is not None else DEFAULT_MAX_LEN)


def served_max_len(spec: TaskSpec, limit: int | None) -> int:
    """The length a task's inputs are cut at when predicting: its trained length, at most the
    encoder's positions `limit` (None: no limit known)."""
    n = train_max_len(spec)
    return min(n, limit or n)


def length_groups(
    specs: Mapping[str, TaskSpec], names: Sequence[str], max_len: int | None, limit: int | None
) -> dict[int, list[str]]:
    """{cut length: the tasks served at it}: `max_len`, or (None) each task's `train_max_len`,
    capped at the encoder's positions `limit`."""
    groups: dict[int, list[str]] = {}
    for t in names:
        n = max_len if max_len is not None else train_max_len(specs[t])
        groups.setdefault(min(n, limit or n), []).append(t)
    return groups


# ------------------------------------------------------------------------------ tokens, batches
def tokenize(tokenizer, texts, text_pairs, max_len: int):
    """(token id rows, token type rows or None, whether each input was cut), cut at `max_len`
    tokens (longest first for pairs)."""
    if not len(texts):
        return [], None, []
    enc = tokenizer(
        list(texts), list(text_pairs) if text_pairs is not None else None, truncation=True, max_length=max_len
    )
    return enc["input_ids"], enc.get("token_type_ids"), [bool(e.overflowing) for e in enc.encodings]


def length_batches(lengths, batch_size: int, max_tokens: int | None = None) -> list[np.ndarray]:
    """Inference batches: positions into `lengths`, sorted by length, each batch holding at most
    `batch_size` examples and at most `max_tokens` padded tokens (rows x longest row; a single
    example longer than that gets a batch of its own). Sorting keeps padding small; the token
    budget lets short examples go in large batches (fewer, better-filled matmuls) and long ones in
    small batches (bounded activation memory)."""
    if batch_size < 1 or (max_tokens is not None and max_tokens < 1):
        raise ValueError(f"batch_size and max_tokens must be positive, got {batch_size} and {max_tokens}")
    order = np.argsort(np.asarray(lengths), kind="stable")
    sorted_lens = np.asarray(lengths)[order]
    batches, i = [], 0
    while i < len(order):
        size = min(batch_size, len(order) - i)
        if max_tokens is not None:
            # padded cost of taking the next k examples = k * length of the k-th (lengths ascend)
            cost = np.arange(1, size + 1) * sorted_lens[i : i + size]
            size = max(1, int(np.searchsorted(cost, max_tokens, side="right")))
        batches.append(order[i : i + size])
        i += size
    return batches


def pad_rows(rows: Sequence[Sequence[int]], types: Sequence[Sequence[int]] | None, pad_id: int, multiple: int = 1):
    """Token rows padded on the right to the longest of them (rounded up to `multiple`):
    (input_ids, attention_mask, token_type_ids or None when there are no token types), int64 (B, L)."""
    width = max(len(r) for r in rows)
    if multiple > 1:
        width = -(-width // multiple) * multiple
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    tt = np.zeros((len(rows), width), dtype=np.int64) if types is not None else None
    for j, row in enumerate(rows):
        k = len(row)
        ids[j, :k], mask[j, :k] = row, 1
        if tt is not None:
            tt[j, :k] = types[j]
    return ids, mask, tt


def batched_logits(
    run_batch: RunBatch,
    names: Sequence[str],
    widths: Mapping[str, int],
    rows,
    types,
    pad_id: int,
    batch_size: int,
    max_tokens: int | None,
) -> dict[str, np.ndarray]:
    """{task: (N, C) float32 logits} of `names` on token rows: length-sorted token-budget batches, one
    model call per batch for every task; input order kept."""
    outs = {t: np.zeros((len(rows), widths[t]), dtype=np.float32) for t in names}
    for sel in length_batches([len(r) for r in rows], batch_size, max_tokens) if len(rows) else []:
        batch = pad_rows([rows[i] for i in sel], [types[i] for i in sel] if types is not None else None, pad_id)
        for t, logits in run_batch(list(names), *batch).items():
            outs[t][sel] = np.asarray(logits, dtype=np.float32).reshape(len(sel), -1)
    return outs


def text_logits(
    tokenizer,
    run_batch: RunBatch,
    specs: Mapping[str, TaskSpec],
    names: Sequence[str],
    texts,
    text_pairs,
    max_len: int,
    batch_size: int,
    max_tokens: int | None,
):
    """({task: (N, C) logits}, whether each text was cut) of `names` on texts cut at `max_len`:
    tokenised once, then `batched_logits`."""
    rows, types, cut = tokenize(tokenizer, texts, text_pairs, max_len)
    widths = {t: kind_of(specs[t]).num_outputs for t in names}
    return batched_logits(run_batch, names, widths, rows, types, pad_token_id(tokenizer), batch_size, max_tokens), cut


# ------------------------------------------------------------------------------------ predict
def check_request(
    known: Mapping[str, TaskSpec], tasks: str | Sequence[str], texts, text_pairs
) -> tuple[bool, list[str]]:
    """(one task asked for, the task names); refuses unknown tasks (KeyError), a bare string for
    texts or pairs (TypeError), pairs not matching the texts one to one and a pair task without pairs
    (ValueError)."""
    single = isinstance(tasks, str)
    names = [tasks] if single else list(tasks)
    for t in names:
        if t not in known:
            raise KeyError(f"unknown task {t!r}; this model has {list(known)}")
    if isinstance(texts, str) or isinstance(text_pairs, str):
        raise TypeError("texts and text_pairs must be sequences of strings, not one string")
    if text_pairs is not None and len(text_pairs) != len(texts):
        raise ValueError(f"{len(texts)} texts but {len(text_pairs)} text pairs")
    pair_tasks = [t for t in names if "text_b" in known[t].fields]
    if text_pairs is None and pair_tasks and len(texts):  # no texts: nothing to pair
        raise ValueError(
            f"task {', '.join(map(repr, pair_tasks))} reads sentence pairs: give text_pairs, one second text per text"
        )
    return single, names


def predict(
    model,
    tasks: str | Sequence[str],
    texts,
    text_pairs=None,
    *,
    batch_size: int = 64,
    max_len: int | None = None,
    return_probs: bool = False,
    max_tokens: int | None = 8192,
    max_positions: int | None = None,
    as_json: bool = False,
):
    """The whole of `MTModel.predict` (see there) over any model with `.tasks`, `.tokenizer` and
    `.run_batch`: for one task a list (labels, scores, or (N, C) probabilities; with `as_json` the
    HTTP API's answer objects), for several {task: list}. Tasks of different cut lengths are served
    per length (texts tokenised once per distinct length)."""
    specs, tokenizer, run_batch = model.tasks, model.tokenizer, model.run_batch
    single, names = check_request(specs, tasks, texts, text_pairs)
    outs = task_logits(
        specs,
        tokenizer,
        run_batch,
        names,
        texts,
        text_pairs,
        batch_size=batch_size,
        max_len=max_len,
        max_tokens=max_tokens,
        max_positions=max_positions,
    )
    kinds = {t: kind_of(specs[t]) for t in names}
    if as_json:
        result = {t: [kinds[t].answer_json(row, return_probs) for row in outs[t]] for t in names}
    else:
        result = {t: kinds[t].answers(outs[t], return_probs) for t in names}
    return result[names[0]] if single else result


def task_logits(
    specs: Mapping[str, TaskSpec],
    tokenizer,
    run_batch: RunBatch,
    names: Sequence[str],
    texts,
    text_pairs=None,
    *,
    batch_size: int = 64,
    max_len: int | None = None,
    max_tokens: int | None = 8192,
    max_positions: int | None = None,
) -> dict[str, np.ndarray]:
    """{task: (N, C) logits} of a checked request (`check_request`): each task's inputs cut at
    `max_len` (None: its trained length), at most `max_positions`; texts tokenised once per length."""
    outs: dict[str, np.ndarray] = {}
    for n, group in length_groups(specs, names, max_len, max_positions).items():
        outs.update(text_logits(tokenizer, run_batch, specs, group, texts, text_pairs, n, batch_size, max_tokens)[0])
    return outs
