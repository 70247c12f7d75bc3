"""Data: read a task's file -> tokenise once -> memory-mapped cache -> dynamically padded batches.

Reading is strict: every refused row names the file, the line and the field (errors.DataError).
Tokenising happens once per (tokenizer, max length, file contents, field mapping); the result is a
folder of flat numpy arrays opened with mmap, so a 400k-example task costs no Python object per
token and training never tokenises.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mtkd.errors import DataError, did_you_mean
from mtkd.files import file_fingerprint
from mtkd.heads import kind_of
from mtkd.inference import pad_rows, pad_token_id
from mtkd.tasks import FileFormat, TaskSpec

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: meta.json records the tokenizer's pad id
DEFAULT_DATA_ROOT = Path("../shared/data/glue")


def resolve_data_root(root: str | Path | None) -> Path:
    """`root` if given, else $MTKD_DATA_ROOT, else ../shared/data/glue (this machine's layout)."""
    return Path(root or os.environ.get("MTKD_DATA_ROOT") or DEFAULT_DATA_ROOT).expanduser()


# ----------------------------------------------------------------------------------------- reading
@dataclass
class RawSplit:
    """A split as read from disk, before tokenising. `labels` is None for unlabelled (test) files."""

    path: Path
    ids: list[str]
    text_a: list[str]
    text_b: list[str] | None
    labels: list[Any] | None
    skipped: list[tuple[int, str]] = field(default_factory=list)  # (line, reason), skip_malformed only
    fingerprint: str = ""

    def __len__(self) -> int:
        return len(self.ids)


def _decode(path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DataError(path, f"bytes are not valid UTF-8 (byte {e.start}: {data[e.start:e.start + 4]!r})", line=line) from None


def _rows_delimited(path: Path, text: str, fmt: FileFormat, columns):
    """Yield (line_number, {column: value}) for TSV/CSV; checks the field count of every row."""
    if fmt == FileFormat.TSV:
        lines = text.split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        records = ((i + 1, ln[:-1].split("\t") if ln.endswith("\r") else ln.split("\t")) for i, ln in enumerate(lines))
    else:
        reader = csv.reader(io.StringIO(text, newline=""))

        def _csv_records():
            try:
                for row in reader:
                    yield reader.line_num, row
            except csv.Error as e:  # e.g. a field over csv's size limit
                raise DataError(path, f"malformed CSV ({e})", line=reader.line_num + 1) from None

        records = _csv_records()
    records = iter(records)
    if columns is None:
        try:
            _, header = next(records)
        except StopIteration:
            raise DataError(path, "file has no header line") from None
        header = [h.strip() for h in header]
    else:
        header = list(columns)
    yield 0, header
    for line, values in records:
        yield line, values


def _json_object(path: Path, line=None):
    """object_pairs_hook for json.loads: a repeated key (e.g. a duplicate example id in an
    {id: record} file) is an error instead of silently keeping the last value."""

    def hook(pairs):
        out = {}
        for k, v in pairs:
            if k in out:
                raise DataError(path, f"duplicate JSON key {k!r} (in an {{id: record}} file: a duplicate example id)", line=line)
            out[k] = v
        return out

    return hook


def _rows_json(path: Path, text: str, fmt: FileFormat):
    """Yield (line_or_key, record_id, {column: value}) for JSONL/JSON."""
    if fmt == FileFormat.JSONL:
        for i, ln in enumerate(text.split("\n")):
            if not ln.strip():
                continue
            try:
                obj = json.loads(ln, object_pairs_hook=_json_object(path, i + 1))
            except (ValueError, RecursionError) as e:  # JSONDecodeError, huge integers, deep nesting
                raise DataError(path, f"invalid JSON ({getattr(e, 'msg', e)})", line=i + 1) from None
            if not isinstance(obj, dict):
                raise DataError(path, f"expected a JSON object, got {type(obj).__name__}", line=i + 1)
            yield i + 1, None, obj
        return
    try:
        obj = json.loads(text, object_pairs_hook=_json_object(path))
    except (ValueError, RecursionError) as e:  # JSONDecodeError, huge integers, deep nesting
        raise DataError(path, f"invalid JSON ({getattr(e, 'msg', e)})", line=getattr(e, "lineno", None)) from None
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else None
    if items is None:
        raise DataError(path, "expected a JSON object {id: record} or a list of records")
    for key, rec in items:
        if not isinstance(rec, dict):
            raise DataError(path, f"record {key!r}: expected a JSON object, got {type(rec).__name__}")
        yield f"record {key!r}", str(key), rec


HEAD_BYTES = 1 << 20  # what check_split reads of a TSV/CSV/JSONL file: the header and the first rows
# the longest line a TSV/CSV/JSONL file may have: one example, not a corpus (a 1 GB line would take
# several GB to decode and split); checked on the bytes, before anything else is done with them
MAX_LINE_BYTES = 16 << 20


def check_line_lengths(path: Path, data: bytes, limit: int = MAX_LINE_BYTES, chunk: int = 1 << 26) -> None:
    """Refuse (DataError naming the line) a line of `data` longer than `limit` bytes."""
    view = np.frombuffer(data, dtype=np.uint8)
    last_end, lines = -1, 0  # offset of the newline before the current line, newlines seen
    for offset in range(0, len(view), chunk):
        ends = np.flatnonzero(view[offset:offset + chunk] == 10) + offset
        lengths = np.diff(ends, prepend=last_end) - 1
        too_long = np.flatnonzero(lengths > limit)
        if len(too_long):
            lines += int(too_long[0])
            break
        lines += len(ends)
        last_end = int(ends[-1]) if len(ends) else last_end
    else:
        if len(view) - last_end - 1 <= limit:
            return
    raise DataError(path, f"line longer than {limit // 2**20} MB (one example per line is expected; is this the "
                          f"right file and format?)", line=lines + 1)


def split_path(spec: TaskSpec, split: str, root: str | Path | None = None) -> Path:
    """Where a split's file is: its path, under the data root when relative (see resolve_data_root)."""
    if split not in spec.splits:
        raise DataError(f"task {spec.name}", f"has no split {split!r}; it has {list(spec.splits)}")
    path = Path(spec.splits[split].path)
    return path if path.is_absolute() else resolve_data_root(root) / path


def file_not_found(spec: TaskSpec, split: str, path: Path) -> DataError:
    """The error for a split whose file is not there; the data-root hint only for a relative path."""
    hint = "" if Path(spec.splits[split].path).is_absolute() else "; set data.root or $MTKD_DATA_ROOT"
    return DataError(path, f"file not found (task {spec.name}, split {split}{hint})")


def _read_head(path: Path) -> tuple[bytes, bool]:
    """The first HEAD_BYTES of a file cut after its last whole line, and whether that is the whole file."""
    with open(path, "rb") as f:
        data = f.read(HEAD_BYTES + 1)
        if len(data) <= HEAD_BYTES:
            return data, True
        cut = data.rfind(b"\n")
        return (data[:cut + 1], False) if cut >= 0 else (data + f.read(), True)


def check_split(spec: TaskSpec, split: str, root: str | Path | None = None) -> None:
    """The checks of read_split that need only the start of the file, with the same errors: the file
    exists and is UTF-8, its header (or the split's `columns`) has every mapped column, and its first
    row has the header's number of fields and every mapped field (labels not checked beyond it).
    Reads at most HEAD_BYTES of a TSV/CSV/JSONL file; a JSON file is parsed whole."""
    read_split(spec, split, root, head_only=True)


def check_files(specs: dict[str, TaskSpec], root: str | Path | None = None,
                splits: tuple[str, ...] = ("train", "dev", "test"), rows: bool = False) -> list[str]:
    """Check every file of `specs` whose split name starts with one of `splits`, all of them before
    any is tokenised: check_split each (with `rows`, read_split: every row's labels, texts and ids).
    Raises one DataError naming every problem found (the error itself when there is one). A test
    file that is not there is no error (predict reports it): returns those as notes."""
    problems: list[DataError] = []
    notes: list[str] = []
    for spec in specs.values():
        for split in spec.splits:
            if not split.startswith(tuple(splits)):
                continue
            path = split_path(spec, split, root)
            if split.startswith("test") and not path.is_file():
                notes.append(str(file_not_found(spec, split, path)))
                continue
            try:
                read_split(spec, split, root) if rows else check_split(spec, split, root)
            except DataError as e:
                problems.append(e)
    raise_problems(problems)
    return notes


def raise_problems(problems: list[DataError]) -> None:
    """Raise the one problem as it is, or one DataError listing them all."""
    if len(problems) == 1:
        raise problems[0]
    if problems:
        raise DataError("data", f"{len(problems)} problems:\n  " + "\n  ".join(str(e) for e in problems))


def read_split(spec: TaskSpec, split: str, root: str | Path | None = None, head_only: bool = False) -> RawSplit:
    """Read one split of a task, validating every row against the task definition (with
    `head_only`, only the header and the first row: see check_split)."""
    path = split_path(spec, split, root)
    src = spec.splits[split]
    if not path.is_file():
        raise file_not_found(spec, split, path)
    data, complete = _read_head(path) if head_only and src.format != FileFormat.JSON else (path.read_bytes(), True)
    if complete and not data.strip():
        raise DataError(path, "file is empty")
    if src.format != FileFormat.JSON:
        check_line_lengths(path, data)
    text = _decode(path, data)
    fields = spec.fields_for(split)
    if split.startswith("test") and "label" in fields and not _has_column(text, src, fields["label"]):
        del fields["label"]  # test files carry no labels: the label column may be absent
    rows = _SplitRows(spec, split, path, fields, fingerprint=hashlib.sha256(data).hexdigest())
    if src.format in (FileFormat.TSV, FileFormat.CSV):
        _add_delimited(rows, text, src, head_only)
    else:
        for line, record_id, row in _rows_json(path, text, src.format):
            rows.add(line, record_id, row)
            if head_only:
                break
    return rows.finish(complete, head_only)


class _SplitRows:
    """read_split's checks row by row while the split is collected: ids unique (a row without an id
    column gets its record key or its position), texts not empty, labels parsed; a test file's label
    may be empty, but then on every row (an unlabelled test file) or on none."""

    def __init__(self, spec: TaskSpec, split: str, path: Path, fields: dict[str, str], fingerprint: str):
        self.spec, self.path, self.fields = spec, path, fields
        self.is_test = split.startswith("test")
        self.id_col, self.a_col, self.b_col, self.y_col = (fields.get(k) for k in ("id", "text_a", "text_b", "label"))
        self.out = RawSplit(path, [], [], [] if self.b_col else None, [] if self.y_col else None, fingerprint=fingerprint)
        self.first_seen: dict[str, Any] = {}  # example id -> the line it is on
        self.empty_labels: list = []  # lines of a test file whose label is empty

    def _get(self, row: dict, col: str, role: str, line):
        if col not in row or row[col] is None:
            raise DataError(self.path, f"missing field for {role}", line=line, field=col)
        return row[col]

    def _text(self, row: dict, col: str, role: str, line) -> str:
        text = str(self._get(row, col, role, line))
        if not text.strip():
            raise DataError(self.path, "empty text", line=line, field=col)
        return text

    def add(self, line, record_id, row: dict) -> None:
        out, path = self.out, self.path
        if self.id_col:
            ex_id = str(self._get(row, self.id_col, "id", line)).strip()
        else:
            ex_id = record_id if record_id is not None else str(len(out.ids))
        if ex_id in self.first_seen:
            raise DataError(path, f"duplicate example id {ex_id!r} (first seen at line {self.first_seen[ex_id]})",
                            line=line, field=self.id_col or "id")
        self.first_seen[ex_id] = line
        a = self._text(row, self.a_col, "text_a", line)
        out.ids.append(ex_id)
        out.text_a.append(a)
        if self.b_col:
            out.text_b.append(self._text(row, self.b_col, "text_b", line))
        if self.y_col:
            y_col = self.y_col
            value = "" if self.is_test and row.get(y_col) is None else str(self._get(row, y_col, "label", line)).strip()
            if not value and self.is_test:  # a test file's label column may be left empty (or null)
                self.empty_labels.append(line)
                out.labels.append(None)
            else:
                out.labels.append(_parse_label(self.spec, value, path, line, y_col))

    def finish(self, complete: bool, head_only: bool) -> RawSplit:
        out, path, empty = self.out, self.path, self.empty_labels
        if not out.ids and complete:
            raise DataError(path, "file has no data rows")
        if empty and len(empty) == len(out.ids):
            out.labels = None  # an empty label column: an unlabelled test file
        elif empty:
            raise DataError(path, f"empty label on {len(empty)} of {len(out.ids)} rows (a test file is labelled on "
                                  f"every row or on none)", line=empty[0], field=self.y_col)
        if out.skipped and not head_only:
            log.warning("%s: skipped %d malformed rows (lines %s)", path, len(out.skipped), [s[0] for s in out.skipped][:20])
        return out


def _add_delimited(rows: _SplitRows, text: str, src, head_only: bool) -> None:
    """A TSV/CSV file's rows into `rows`: the header (or the split's `columns`) must name every mapped
    column; a row with another number of fields is an error, or skipped with `skip_malformed`."""
    path, out = rows.path, rows.out
    records = _rows_delimited(path, text, src.format, src.columns)
    _, header = next(records)
    for role, col in rows.fields.items():
        if col not in header:
            what = f"header has no column {col!r}" if src.columns is None else f"columns have no {col!r}"
            raise DataError(path, f"{what} for {role} (task {rows.spec.name}){did_you_mean(col, header)}; "
                                  f"{'header is' if src.columns is None else 'the split names columns'} {header}",
                            line=None if src.columns else 1, field=col)
    for line, values in records:
        if head_only and out.ids:
            break
        if len(values) != len(header):
            reason = f"expected {len(header)} fields {header}, found {len(values)}"
            if src.skip_malformed:
                out.skipped.append((line, reason))
                continue
            raise DataError(path, reason, line=line)
        rows.add(line, None, dict(zip(header, values)))


def _has_column(text: str, src, column: str) -> bool:
    if src.format in (FileFormat.TSV, FileFormat.CSV):
        if src.columns is not None:
            return column in src.columns
        first = text.split("\n", 1)[0].rstrip("\r")
        try:
            header = first.split("\t") if src.format == FileFormat.TSV else next(csv.reader([first]), [])
        except csv.Error:
            return False  # reading the file reports the malformed header
        return column in [h.strip() for h in header]
    return f'"{column}"' in text[:100_000]


def _parse_label(spec: TaskSpec, value: str, path, line, col):
    """A label as its head kind parses it; its refusal names the file, line and column."""
    try:
        return kind_of(spec).parse_label(value)
    except ValueError as e:
        hint = did_you_mean(value, spec.labels) if value and spec.labels else ""
        raise DataError(path, f"{e}{hint}", line=line, field=col) from None


# ------------------------------------------------------------------------------------- tokenising
def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise DataError("tokenizer", f"{type(tokenizer).__name__} is not a fast tokenizer; mtkd needs one (use_fast=True)")
    # the vocabulary and pipeline only: truncation/padding settings differ between an encoder's
    # tokenizer.json and the one save_pretrained writes, and mtkd sets both itself
    spec = {k: v for k, v in json.loads(backend.to_str()).items() if k not in ("truncation", "padding")}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class EncodedSplit:
    """A tokenised split: flat token arrays + offsets (memory-mapped), labels, example ids.

    Example i's tokens are input_ids[offsets[i]:offsets[i+1]].
    """

    task: str
    split: str
    ids: list[str]
    input_ids: np.ndarray  # (total_tokens,) int32
    token_type_ids: np.ndarray | None  # (total_tokens,) int8
    offsets: np.ndarray  # (n + 1,) int64
    labels: np.ndarray | None  # (n,) int64 (classification/ranking) or float32 (regression)
    meta: dict
    groups: np.ndarray | None = None  # (n,) int64 query group (ranking tasks)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def rows(self, indices, values: np.ndarray | None = None) -> list[np.ndarray]:
        """Examples `indices` as token rows (views into the flat arrays): their `values` (default: input_ids)."""
        values = self.input_ids if values is None else values
        return [values[self.offsets[i]:self.offsets[i + 1]] for i in indices]

    @property
    def fingerprint(self) -> str:
        return self.meta["data_fingerprint"]


def _cache_key(spec: TaskSpec, split: str, raw_fp: str, tok_fp: str, max_len: int) -> str:
    src = spec.splits[split]
    payload = json.dumps([CACHE_VERSION, spec.head.value, list(spec.labels), spec.fields_for(split),
                          src.format.value, list(src.columns or ()), raw_fp, tok_fp, max_len], sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def encode_split(spec: TaskSpec, split: str, tokenizer, max_len: int, cache_dir: str | Path,
                 root: str | Path | None = None, chunk: int = 8192) -> EncodedSplit:
    """Tokenise a split once (cached by tokenizer + max length + file contents) and open it by mmap.

    Truncation cuts tokens (longest-first for pairs), never examples; the count of truncated
    examples is kept in meta['n_truncated'] and logged.
    """
    path = split_path(spec, split, root)
    if not path.is_file():
        raise file_not_found(spec, split, path)
    tok_fp = tokenizer_fingerprint(tokenizer)
    key = _cache_key(spec, split, file_fingerprint(path), tok_fp, max_len)
    folder = Path(cache_dir) / f"{spec.name}.{split}.{key}"
    if not (folder / "meta.json").is_file():
        _write_cache(spec, split, tokenizer, max_len, root, folder, tok_fp, chunk)
    return load_encoded(folder)


def _write_cache(spec, split, tokenizer, max_len, root, folder: Path, tok_fp, chunk):
    raw = read_split(spec, split, root)
    from tokenizers import Tokenizer

    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.enable_truncation(max_len, strategy="longest_first")
    n = len(raw)
    offsets = np.zeros(n + 1, dtype=np.int64)
    ids_parts, type_parts, n_trunc = [], [], 0
    for start in range(0, n, chunk):
        a = raw.text_a[start:start + chunk]
        inputs = list(zip(a, raw.text_b[start:start + chunk])) if raw.text_b is not None else a
        for j, enc in enumerate(backend.encode_batch(inputs)):
            offsets[start + j + 1] = offsets[start + j] + len(enc.ids)
            n_trunc += bool(enc.overflowing)
            ids_parts.append(np.asarray(enc.ids, dtype=np.int32))
            type_parts.append(np.asarray(enc.type_ids, dtype=np.int8))
    if n_trunc:
        log.info("%s/%s: %d of %d examples truncated to %d tokens", spec.name, split, n_trunc, n, max_len)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=folder.name + ".tmp", dir=folder.parent))
    np.save(tmp / "input_ids.npy", np.concatenate(ids_parts))
    np.save(tmp / "token_type_ids.npy", np.concatenate(type_parts))
    np.save(tmp / "offsets.npy", offsets)
    kind = kind_of(spec)
    if raw.labels is not None:
        np.save(tmp / "labels.npy", np.asarray(raw.labels, dtype=kind.label_dtype))
    groups = kind.groups(raw.text_a)
    if groups is not None:
        np.save(tmp / "groups.npy", groups)
    meta = {"cache_version": CACHE_VERSION, "task": spec.name, "split": split, "path": str(raw.path),
            "data_fingerprint": raw.fingerprint, "tokenizer_fingerprint": tok_fp, "max_len": max_len,
            "n": n, "n_truncated": n_trunc, "skipped_rows": raw.skipped, "pad_id": pad_token_id(tokenizer),
            "ids": raw.ids}
    (tmp / "meta.json").write_text(json.dumps(meta))
    try:
        os.rename(tmp, folder)  # atomic: a reader sees either no cache or a complete one
    except OSError:  # another process won the race
        shutil.rmtree(tmp, ignore_errors=True)


def load_encoded(folder: Path) -> EncodedSplit:
    meta = json.loads((folder / "meta.json").read_text())
    ids = meta.pop("ids")
    labels = np.load(folder / "labels.npy", mmap_mode="r") if (folder / "labels.npy").is_file() else None
    groups = np.load(folder / "groups.npy") if (folder / "groups.npy").is_file() else None
    return EncodedSplit(meta["task"], meta["split"], ids,
                        np.load(folder / "input_ids.npy", mmap_mode="r"),
                        np.load(folder / "token_type_ids.npy", mmap_mode="r"),
                        np.load(folder / "offsets.npy"), labels, meta, groups)


# -------------------------------------------------------------------------------------- batching
def collate(data: EncodedSplit, indices, pad_id: int | None = None, pad_multiple: int = 1) -> dict[str, torch.Tensor]:
    """Pad examples `indices` of `data` to the longest in the batch (dynamic padding), with `pad_id`
    or by default the tokenizer's pad id recorded in the split's meta (0 where none is recorded).

    Returns input_ids/attention_mask/token_type_ids (B, L) int64, `index` (B,) positions in the
    split (used to look up soft targets) and `labels` (B,) when the split is labelled.
    """
    indices = np.asarray(indices, dtype=np.int64)
    if pad_id is None:
        pad_id = int(data.meta.get("pad_id", 0))
    ids, mask, types = pad_rows(data.rows(indices), data.rows(indices, data.token_type_ids), pad_id, pad_multiple)
    batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask),
             "token_type_ids": torch.from_numpy(types), "index": torch.from_numpy(indices)}
    if data.groups is not None:
        batch["groups"] = torch.from_numpy(data.groups[indices])
    if data.labels is not None:
        batch["labels"] = torch.from_numpy(np.asarray(data.labels[indices]))
    return batch


@dataclass
class TrainSet:
    """The examples of a split a stage trains on: the split and its indices after caps."""
    data: EncodedSplit
    indices: np.ndarray


def subsample(n: int, cap: int | None, seed: int) -> np.ndarray:
    """Indices of a seeded random subset of size `cap` (all, in order, when cap is None or >= n)."""
    if cap is None or cap >= n:
        return np.arange(n, dtype=np.int64)
    return np.sort(np.random.default_rng(seed).permutation(n)[:cap]).astype(np.int64)
