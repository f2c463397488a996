"""Storage URIs of models, datasets and outputs, parsed once into typed values.

Accepted schemes:

- ``hf://org/name@revision`` — a Hugging Face Hub repository, optionally pinned to a revision.
- ``pvc://claim/path`` — a path inside a PersistentVolumeClaim; the operator mounts the claim.
- ``s3://bucket/prefix`` — an object-store prefix, read with fsspec.
- ``file:///path`` — a local path (local mode, or a path already mounted in the pod).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Literal

Scheme = Literal["hf", "pvc", "s3", "file"]
SCHEMES: tuple[Scheme, ...] = ("hf", "pvc", "s3", "file")

# The CRD rejects anything that does not even look like one of our URIs; parse_uri says what is wrong.
URI_PATTERN = r"^(hf|pvc|s3|file)://\S+$"

_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_HF_PART = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_S3_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


# Where the operator mounts each PersistentVolumeClaim named by a pvc:// URI inside the trainer pod:
# pvc://claim/path is the file <PVC_MOUNT_ROOT>/claim/path. The trainer accepts another root (local runs).
PVC_MOUNT_ROOT = PurePosixPath("/mnt/kubetune/pvc")


class UriError(ValueError):
    """A URI that cannot be used; the message says why, without repeating any credentials."""


@dataclass(frozen=True, kw_only=True)
class StorageUri:
    scheme: Scheme
    raw: str
    # hf: "org/name"; pvc: claim name; s3: bucket; file: "".
    authority: str
    # Path inside the claim, bucket or filesystem, without a leading slash for pvc/s3.
    path: str
    # hf only: the pinned revision (branch, tag or commit), if any.
    revision: str | None = None

    @property
    def pvc_claim(self) -> str | None:
        return self.authority if self.scheme == "pvc" else None


def parse_uri(raw: str) -> StorageUri:
    """Parse and check a storage URI; raise :class:`UriError` naming the problem."""
    scheme, sep, rest = raw.partition("://")
    if not sep:
        raise UriError(f"{raw!r} is not a URI: expected one of {', '.join(s + '://' for s in SCHEMES)}")
    if scheme not in SCHEMES:
        raise UriError(f"unsupported scheme {scheme!r}: expected one of {', '.join(SCHEMES)}")
    if not rest or any(c.isspace() for c in rest):
        raise UriError(f"{scheme}:// URI has an empty or blank location")
    authority_part = rest.split("/", 1)[0]
    if ("@" in authority_part and scheme != "hf") or (":" in authority_part and scheme in ("s3", "pvc")):
        # s3://KEY:SECRET@bucket would put a credential into the spec, status and logs.
        raise UriError(
            f"{scheme}:// URIs must not carry credentials or ports; reference a Secret under spec.credentials"
        )
    if scheme == "hf":
        return _parse_hf(raw, rest)
    if scheme == "pvc":
        claim, _, path = rest.partition("/")
        if not _DNS1123_LABEL.match(claim) or len(claim) > 253:
            raise UriError(f"pvc:// claim name {claim!r} is not a valid PersistentVolumeClaim name")
        return StorageUri(scheme="pvc", raw=raw, authority=claim, path=_clean_path(path, raw))
    if scheme == "s3":
        bucket, _, prefix = rest.partition("/")
        if not _S3_BUCKET.match(bucket):
            raise UriError(f"s3:// bucket name {bucket!r} is not a valid bucket name")
        return StorageUri(scheme="s3", raw=raw, authority=bucket, path=prefix.strip("/"))
    if not rest.startswith("/"):
        raise UriError("file:// URIs must be absolute: file:///path")
    return StorageUri(scheme="file", raw=raw, authority="", path=_clean_path(rest, raw, absolute=True))


def _parse_hf(raw: str, rest: str) -> StorageUri:
    repo, _, revision = rest.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(_HF_PART.match(p) for p in parts):
        raise UriError(f"hf:// URI {raw!r} must name a repository as hf://org/name[@revision]")
    if "@" in rest and not revision:
        raise UriError(f"hf:// URI {raw!r} has an empty revision after '@'")
    return StorageUri(scheme="hf", raw=raw, authority=repo, path="", revision=revision or None)


def _clean_path(path: str, raw: str, *, absolute: bool = False) -> str:
    segments = [s for s in path.split("/") if s]
    if ".." in segments:
        raise UriError(f"{raw!r} must not contain '..' path segments")
    joined = "/".join(segments)
    return "/" + joined if absolute else joined


def pvc_mount_path(claim: str, *, root: PurePosixPath = PVC_MOUNT_ROOT) -> PurePosixPath:
    """The directory a claim is mounted at in the trainer pod."""
    return root / claim


def local_path(uri: StorageUri, *, pvc_root: PurePosixPath = PVC_MOUNT_ROOT) -> PurePosixPath | None:
    """The filesystem path of a file:// or pvc:// URI; ``None`` for remote (hf://, s3://) URIs."""
    if uri.scheme == "file":
        return PurePosixPath(uri.path)
    if uri.scheme == "pvc":
        return pvc_mount_path(uri.authority, root=pvc_root) / uri.path
    return None
