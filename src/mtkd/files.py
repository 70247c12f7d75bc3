"""Files mtkd writes and reads back: written whole or not at all, damage reported by path.

Every file goes through `atomic_write` / `atomic_output`: the bytes go to a temporary file beside
the target, are flushed to disk (fsync), and the temporary file is renamed over the target, so a
kill at any moment leaves the old file or the new one, never a truncated one. A failed write removes
its temporary file and says why in one line: no space left (with the size it needed), a read-only
or forbidden folder. `read_json` treats a damaged file (a crash of an older writer, a hand edit) as
absent, with a warning naming it. Torch-free: the ONNX side writes through it too.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import math
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from mtkd.errors import DiskFullError, MtkdError

log = logging.getLogger(__name__)

TMP_SUFFIX = ".tmp"


class OutputError(MtkdError):
    """A file could not be written for a reason the user must fix (read-only folder, permissions)."""


def file_fingerprint(path: Path) -> str:
    """sha256 of a file's bytes (read in 1 MiB chunks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_digest(path: Path) -> dict:
    """{"size": bytes, "sha256": hex} of a file."""
    return {"size": Path(path).stat().st_size, "sha256": file_fingerprint(path)}


def no_space(e: BaseException, where: Path, needed: int = 0) -> bool:
    """Whether a failed write ran out of space (some writers only say "iostream error": then the
    free space of `where` against the `needed` bytes decides)."""
    if getattr(e, "errno", None) in (errno.ENOSPC, errno.EDQUOT):
        return True
    if any(s in str(e) for s in ("No space left", "StorageFull", "Disk quota")):
        return True
    try:
        return needed > 0 and shutil.disk_usage(where).free < needed
    except OSError:
        return False


def write_error(e: BaseException, path: Path, what: str, needed: int = 0) -> MtkdError | None:
    """The one-line error for a failed write of `what` to `path` (a file, or the folder written
    into), or None when `e` is not about the file system (then the caller re-raises it)."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if no_space(e, folder, needed):
        free = shutil.disk_usage(folder).free if folder.exists() else 0
        need = f"about {math.ceil(needed / 2**20)} MB needed, " if needed else ""
        return DiskFullError(
            f"no space left on {folder}: {need}{free // 2**20} MB free; {what} was not written "
            f"(its partial files are removed, earlier files are kept); free some space and rerun"
        )
    if getattr(e, "errno", None) in (errno.EROFS, errno.EACCES, errno.EPERM):
        return OutputError(f"cannot write {what} to {path}: {os.strerror(e.errno)} (choose a writable --output-dir)")
    return None


@contextlib.contextmanager
def atomic_output(path: str | Path, what: str | None = None, needed: int = 0) -> Iterator[Path]:
    """A temporary path beside `path` to write the whole file into (for writers that want a file
    name: safetensors, numpy, zip); on success it is flushed to disk and renamed to `path`. On failure
    it is removed and a file-system failure becomes DiskFullError / OutputError."""
    path = Path(path)
    what = what or path.name
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temp(path)
    except OSError as e:
        raise (write_error(e, path, what, needed) or e) from None
    try:
        yield tmp
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_folder(path.parent)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        err = write_error(e, path, what, needed) if isinstance(e, Exception) else None
        if err is not None:
            raise err from None
        raise


def _new_temp(path: Path) -> Path:
    """An empty new file beside `path`, with the mode a plain open() gives (mkstemp's is 0600)."""
    for _ in range(100):
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")
        try:
            os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(path))


def atomic_write(path: str | Path, data: str | bytes, what: str | None = None) -> None:
    """Write `data` (text is UTF-8) to `path` whole or not at all (see the module docstring)."""
    with atomic_output(path, what, needed=len(data)) as tmp:
        tmp.write_bytes(data.encode("utf-8") if isinstance(data, str) else data)


def write_json(path: str | Path, obj: Any, what: str | None = None, **dumps) -> None:
    """`obj` as JSON (indent 2 unless told otherwise), written atomically."""
    atomic_write(path, json.dumps(obj, **{"indent": 2, **dumps}), what)


def read_json(path: str | Path, what: str | None = None) -> Any | None:
    """A JSON file's content; None when it is absent, or damaged (then a warning names it)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError) as e:
        log.warning("%s: %s is damaged (%s); treating it as absent", path, what or "the file", e)
        return None


def _fsync_folder(folder: Path) -> None:
    """Make a rename durable (POSIX: the folder entry is flushed); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
