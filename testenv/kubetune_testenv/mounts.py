"""Mount points below a directory, and unmounting them: a real node's kubelet and containerd mount a lot."""

from __future__ import annotations

import subprocess
from pathlib import Path


def mount_points() -> list[str]:
    """Every mount point of this process's mount namespace (spaces and such are octal-escaped there)."""
    with open("/proc/self/mountinfo") as handle:
        return [line.split()[4].encode().decode("unicode_escape") for line in handle]


def mounts_under(paths: tuple[Path, ...]) -> list[str]:
    """Mount points below any of ``paths`` (or equal to one), deepest first."""
    roots = [str(path.resolve()) for path in paths]
    found = {point for point in mount_points() if any(point == r or point.startswith(r + "/") for r in roots)}
    return sorted(found, key=lambda point: (-point.count("/"), point))


def unmount_all(paths: tuple[Path, ...]) -> list[str]:
    """Unmount everything below ``paths``; lazily when a mount is busy. Returns what it unmounted."""
    done = []
    for _ in range(5):  # bind mounts can stack several deep on one point
        points = mounts_under(paths)
        if not points:
            break
        for point in points:
            if subprocess.run(["umount", point], capture_output=True, check=False).returncode != 0:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
            done.append(point)
    return done
