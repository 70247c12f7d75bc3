"""Files are written whole or not at all: a failed or killed write leaves the old file and no
temporary file; a full disk, a read-only folder and a damaged file are each said in one line."""

from __future__ import annotations

import errno
import json
import os
import stat

import pytest

from mtkd.errors import DiskFullError
from mtkd.files import OutputError, atomic_output, atomic_write, read_json, write_json


def test_atomic_write_replaces_whole_and_keeps_the_usual_mode(tmp_path):
    path = tmp_path / "sub" / "metrics.json"
    write_json(path, {"a": 1})
    atomic_write(path, "new")
    assert path.read_text() == "new" and [p.name for p in path.parent.iterdir()] == ["metrics.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_a_failing_writer_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "predictions.npz"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="killed"):
        with atomic_output(path) as tmp:
            tmp.write_bytes(b"half of the new")
            raise RuntimeError("killed mid-write")
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["predictions.npz"]


def test_a_full_disk_says_so_with_the_size_and_removes_the_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "soft.safetensors"
    with pytest.raises(
        DiskFullError,
        match=rf"no space left on {tmp_path}: about 3 MB needed, \d+ MB free; "
        r"the soft targets was not written",
    ):
        with atomic_output(path, "the soft targets", needed=3 * 2**20):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_folder_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    """(Simulated: this suite may run as root, for whom a chmod'ed folder is writable.)"""

    def read_only(src, dst):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(dst))

    monkeypatch.setattr(os, "replace", read_only)
    with pytest.raises(OutputError, match=r"cannot write metrics.json to .*/metrics.json: Read-only file system"):
        atomic_write(tmp_path / "metrics.json", "{}")
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_file_system_is_one_line_from_the_command(tmp_path, monkeypatch, capsys):
    """`mtkd` turns the file system's refusals into one line and exit status 2 (not a traceback)."""
    from mtkd import cli

    def refuse(args):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(tmp_path / "run" / "config.yaml"))

    monkeypatch.setattr(cli, "_dispatch", refuse)
    assert cli.main(["tasks"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"mtkd: error: {tmp_path / 'run' / 'config.yaml'}: Read-only file system"


def test_read_json_treats_a_damaged_file_as_absent_and_names_it(tmp_path, caplog):
    path = tmp_path / "metrics.json"
    assert read_json(path) is None
    path.write_bytes(b"")  # a 0-byte file left by a kill inside an unguarded write
    assert read_json(path, "the dev metrics") is None
    assert f"{path}: the dev metrics is damaged" in caplog.text
    write_json(path, [1, 2])
    assert read_json(path) == [1, 2] and json.loads(path.read_text()) == [1, 2]
