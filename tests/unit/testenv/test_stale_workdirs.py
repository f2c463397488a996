"""Work dirs of sessions that were SIGKILLed are removed by the next session; live ones are kept."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from kubetune_testenv.cluster import OWNER_FILE, WORKDIR_PREFIX, remove_stale_workdirs


def test_only_work_dirs_of_dead_owners_are_removed(tmp_path: Path) -> None:
    dead_pid = subprocess.Popen(["true"])
    dead_pid.wait()
    stale, live, foreign = (
        tmp_path / f"{WORKDIR_PREFIX}stale",
        tmp_path / f"{WORKDIR_PREFIX}live",
        tmp_path / f"{WORKDIR_PREFIX}no-owner",
    )
    for directory in (stale, live, foreign):
        directory.mkdir()
    (stale / OWNER_FILE).write_text(str(dead_pid.pid))
    (live / OWNER_FILE).write_text(str(os.getppid()))

    assert remove_stale_workdirs(tmp_path) == [stale]
    assert live.exists()
    assert foreign.exists()
