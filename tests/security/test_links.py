"""File primitives never follow a symbolic link: reads refuse one, atomic writes replace the link itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from hpcqueue.errors import UnsafePathError
from hpcqueue.fileio import atomic_write_json, open_nofollow, read_bytes_nofollow, read_jsonl


def test_an_atomic_write_replaces_a_planted_link_and_leaves_its_target_alone(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o644)
    link = tmp_path / "batch" / "metrics.json"
    link.parent.mkdir()
    link.symlink_to(victim)
    old = os.umask(0o077)
    try:
        atomic_write_json(link, {"state": "completed"})
    finally:
        os.umask(old)
    assert not link.is_symlink() and '"completed"' in link.read_text()
    assert victim.read_text() == "precious\n"
    assert link.stat().st_mode & 0o777 == 0o600  # the umask's mode, not the target's 0644


def test_reads_refuse_a_linked_file_and_a_linked_directory_below_the_base(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    (real / "output.jsonl").write_text('{"line": 1}\n')
    batch = tmp_path / "root" / "hq-x"
    (batch / "tasks").mkdir(parents=True)
    (batch / "tasks" / "000000").symlink_to(real, target_is_directory=True)
    path = batch / "tasks" / "000000" / "output.jsonl"
    assert list(read_jsonl(path)) == [{"line": 1}]  # without a base only the last part is checked
    with pytest.raises(UnsafePathError, match=r"000000 is a symbolic link \(to .*real\)"):
        read_bytes_nofollow(path, below=tmp_path / "root")
    with pytest.raises(UnsafePathError, match=r"000000 is a symbolic link"):
        list(read_jsonl(path, below=tmp_path / "root"))
    (real / "linked.jsonl").symlink_to(real / "output.jsonl")
    with pytest.raises(UnsafePathError, match=r"linked\.jsonl is a symbolic link"):
        list(read_jsonl(real / "linked.jsonl"))
    with pytest.raises(UnsafePathError):
        open_nofollow(real / "linked.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    assert (real / "output.jsonl").read_text() == '{"line": 1}\n'


def test_a_dangling_link_is_refused_too_and_a_missing_file_is_still_missing(tmp_path: Path) -> None:
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UnsafePathError):
        open_nofollow(tmp_path / "dangling", os.O_WRONLY | os.O_CREAT)
    assert not (tmp_path / "nowhere").exists()  # O_CREAT through the link would have made it
    with pytest.raises(FileNotFoundError):
        read_bytes_nofollow(tmp_path / "absent")
