"""Output and checkpoint locations: local paths for file:// and pvc://, fsspec for s3://.

Everything the trainer writes is first written to a local directory, then *published*: renamed into
place on a local filesystem (atomic), or uploaded file by file with a marker file last on an object
store (which has no atomic directory rename). A reader trusts a directory only when its marker exists.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import fsspec

from kubetune.api.uris import PVC_MOUNT_ROOT, local_path, parse_uri
from kubetune.files import fsync_dir
from kubetune_trainer.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class Location:
    """A directory on some filesystem. ``local`` is set when it is a local path (file://, pvc://)."""

    uri: str
    fs: Any  # fsspec.AbstractFileSystem (untyped library)
    path: str
    local: Path | None

    def child(self, name: str) -> Location:
        return Location(
            uri=f"{self.uri.rstrip('/')}/{name}",
            fs=self.fs,
            path=f"{self.path.rstrip('/')}/{name}",
            local=None if self.local is None else self.local / name,
        )

    def exists(self, name: str) -> bool:
        return bool(self.fs.exists(f"{self.path.rstrip('/')}/{name}"))

    def list_dirs(self) -> list[str]:
        """Names of the sub-directories (empty when the location does not exist yet)."""
        if not self.fs.exists(self.path):
            return []
        names = []
        for entry in self.fs.ls(self.path, detail=True):
            if entry["type"] == "directory":
                names.append(PurePosixPath(entry["name"]).name)
        return sorted(names)

    def remove(self, name: str) -> None:
        target = f"{self.path.rstrip('/')}/{name}"
        if self.fs.exists(target):
            self.fs.rm(target, recursive=True)


def resolve_location(uri: str, *, field: str, pvc_root: PurePosixPath = PVC_MOUNT_ROOT) -> Location:
    """The directory a file://, pvc:// or s3:// URI names; ``field`` names the config field in errors."""
    parsed = parse_uri(uri)
    local = local_path(parsed, pvc_root=pvc_root)
    if local is not None:
        return Location(uri=uri, fs=fsspec.filesystem("file"), path=str(local), local=Path(str(local)))
    if parsed.scheme == "s3":
        try:
            fs = fsspec.filesystem("s3")
        except ImportError as err:
            raise ConfigError(f"{field}: s3:// needs s3fs, which this environment lacks ({err})") from None
        return Location(uri=uri, fs=fs, path=f"{parsed.authority}/{parsed.path}".rstrip("/"), local=None)
    raise ConfigError(f"{field}: {uri!r} cannot be written to; use file://, pvc:// or s3://")


def staging_dir(location: Location, name: str) -> Path:
    """A fresh local directory to write ``name`` into before publishing it to ``location``.

    On a local filesystem it sits next to the target (same filesystem, so the rename is atomic) under a
    dot-name that readers ignore; elsewhere it is a temporary directory.
    """
    if location.local is not None:
        location.local.mkdir(parents=True, exist_ok=True)
        tmp = location.local / f".tmp-{name}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        return tmp
    return Path(tempfile.mkdtemp(prefix=f"kubetune-{name}-"))


def publish_dir(staged: Path, location: Location, name: str, *, marker: str) -> None:
    """Move a staged directory to ``location/name``; ``marker`` (a file inside) must land last."""
    if not (staged / marker).is_file():
        raise FileNotFoundError(f"{staged}: marker {marker} missing; refusing to publish an incomplete directory")
    if location.local is not None:
        final = location.local / name
        if final.exists():
            # Re-publishing the same step (a restart wrote it again): move the old one aside first so a
            # crash in between leaves either the old or the new complete directory, never a mix.
            old = location.local / f".old-{name}"
            if old.exists():
                shutil.rmtree(old)
            os.replace(final, old)
            os.replace(staged, final)
            shutil.rmtree(old)
        else:
            os.replace(staged, final)
        fsync_dir(location.local)
        return
    target = location.child(name)
    for path in sorted(staged.rglob("*")):
        if path.is_file() and path.name != marker:
            location.fs.put_file(str(path), f"{target.path}/{path.relative_to(staged).as_posix()}")
    location.fs.put_file(str(staged / marker), f"{target.path}/{marker}")
    shutil.rmtree(staged, ignore_errors=True)


def download_dir(location: Location, name: str, *, into: Path) -> Path:
    """A local copy of ``location/name`` (the directory itself when it is already local)."""
    if location.local is not None:
        return location.local / name
    target = into / name
    location.fs.get(f"{location.path}/{name}", str(target), recursive=True)
    return target
