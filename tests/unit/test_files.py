"""kubetune.files: a reader sees the old file or the new one, never half of one, and no temporary is left."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from kubetune.files import write_file_atomically


def test_the_file_is_renamed_into_place_from_a_temporary_file_in_the_same_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "report.json"
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def spy(src: Any, dst: Any) -> None:
        # At the rename the target still holds the previous content (or does not exist yet).
        assert not Path(dst).exists() or Path(dst).read_text() == "one"
        renames.append((str(src), str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    write_file_atomically(target, "one")
    write_file_atomically(target, b"two")
    assert len(renames) == 2
    for src, dst in renames:
        assert Path(src).parent == Path(dst).parent == tmp_path and src != dst
    assert target.read_text() == "two"
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "sub" / "report.json"
    write_file_atomically(target, "old")

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_file_atomically(target, "new")
    assert [p.name for p in target.parent.iterdir()] == ["report.json"]
    assert target.read_text() == "old"


def test_text_is_written_as_utf8(tmp_path: Path) -> None:
    write_file_atomically(tmp_path / "t.txt", "größe")
    assert (tmp_path / "t.txt").read_bytes() == "größe".encode()
