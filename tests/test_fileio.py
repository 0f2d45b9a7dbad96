"""Atomic writes: a reader sees the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from hpcqueue.fileio import atomic_open, atomic_write_json, atomic_write_jsonl, read_jsonl


def test_failed_write_leaves_the_old_file_and_no_temp_files(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    atomic_write_json(target, {"state": "old"})
    with pytest.raises(RuntimeError), atomic_open(target) as handle:
        handle.write('{"state": "ne')
        raise RuntimeError("worker died mid-write")
    assert json.loads(target.read_text()) == {"state": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


def test_file_does_not_exist_until_the_write_completes(tmp_path: Path) -> None:
    target = tmp_path / "output.jsonl"
    with atomic_open(target) as handle:
        handle.write('{"line": 1}\n')
        assert not target.exists()
    assert target.read_text() == '{"line": 1}\n'


def test_jsonl_round_trip_and_torn_last_line(tmp_path: Path) -> None:
    target = tmp_path / "partial.jsonl"
    atomic_write_jsonl(target, [{"line": 1, "text": "é"}, {"line": 2, "text": None}])
    assert list(read_jsonl(target)) == [{"line": 1, "text": "é"}, {"line": 2, "text": None}]
    with open(target, "a", encoding="utf-8") as handle:
        handle.write('{"line": 3, "te')  # an append cut short by a crash
    assert [r["line"] for r in read_jsonl(target)] == [1, 2]


def test_atomic_open_rejects_append_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="modes"), atomic_open(tmp_path / "x", "a"):
        pass


def test_atomic_files_get_the_mode_a_plain_open_would_give(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.json"
        atomic_write_json(fresh, {"a": 1})
        assert fresh.stat().st_mode & 0o777 == 0o644
        private = tmp_path / "private.json"
        private.write_text("{}")
        private.chmod(0o600)
        atomic_write_json(private, {"a": 2})  # replacing a file keeps its mode
        assert private.stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_private_umask_makes_what_libraries_create_owner_only(tmp_path: Path) -> None:
    from hpcqueue.fileio import private_umask

    old = os.umask(0o022)
    try:
        with private_umask():
            (tmp_path / "made-by-a-library").write_text("x")  # a plain open(), as pandas or submitit do
            (tmp_path / "dir").mkdir()
        (tmp_path / "after").write_text("x")
        assert os.umask(0o022) == 0o022  # the umask is given back
    finally:
        os.umask(old)
    assert (tmp_path / "made-by-a-library").stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "dir").stat().st_mode & 0o777 == 0o700
    assert (tmp_path / "after").stat().st_mode & 0o777 == 0o644


def test_tighten_removes_group_and_other_bits_and_counts_what_changed(tmp_path: Path) -> None:
    from hpcqueue.fileio import is_private, make_private_dir, tighten

    root = make_private_dir(tmp_path / "a" / "b")
    assert root.stat().st_mode & 0o777 == 0o700 and is_private(root)
    (root / "f").write_text("x")
    (root / "f").chmod(0o664)
    (root / "sub").mkdir()
    (root / "sub").chmod(0o775)
    root.chmod(0o755)
    assert not is_private(root)
    assert tighten(root) == 1 and is_private(root) and not is_private(root / "f")
    assert tighten(root, recursive=True) == 2
    assert (root / "f").stat().st_mode & 0o777 == 0o600 and (root / "sub").stat().st_mode & 0o777 == 0o700
    assert tighten(root, recursive=True) == 0
