"""Find the data files a dataset URI names and read their records, remembering where each came from.

file:// and pvc:// URIs are local paths (pvc:// claims are mounted under ``pvc_root``); s3:// is read
with fsspec (s3fs is installed in the trainer image only). A URI naming a directory, or a prefix of
file names, reads every data file under it in sorted order, so sharded datasets keep their order.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Literal

from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from kubetune.api.uris import PVC_MOUNT_ROOT, StorageUri, UriError, local_path, parse_uri
from kubetune_trainer.data.types import DataConfigError

FileKind = Literal["jsonl", "json", "parquet", "csv"]
KINDS_BY_SUFFIX: dict[str, FileKind] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".parquet": "parquet",
    ".csv": "csv",
}
GZIP_SUFFIX = ".gz"


@dataclass(frozen=True, kw_only=True)
class DataFile:
    """One data file: how to open it and the URI that names it in messages ("<uri>:<line>")."""

    uri: str
    kind: FileKind
    gzipped: bool
    fs: AbstractFileSystem
    path: str


@dataclass(frozen=True, kw_only=True)
class RawRecord:
    """One record as read (any JSON value), or the reason it could not be read."""

    source: str
    value: object
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class Resolved:
    files: list[DataFile]
    # Files under a directory/prefix that were skipped for an unknown suffix (reported as a warning).
    skipped: list[str]


def file_kind(name: str) -> tuple[FileKind, bool] | None:
    """The record format of a file name and whether it is gzip-compressed; ``None`` if not a data file."""
    gzipped = name.endswith(GZIP_SUFFIX)
    stem = name.removesuffix(GZIP_SUFFIX) if gzipped else name
    kind = KINDS_BY_SUFFIX.get(PurePosixPath(stem).suffix.lower())
    return None if kind is None else (kind, gzipped)


def resolve_data_files(
    raw_uri: str, *, pvc_root: PurePosixPath = PVC_MOUNT_ROOT, remote_fs: AbstractFileSystem | None = None
) -> Resolved:
    """The data files a URI names: the file itself, or every data file under a directory or prefix.

    ``remote_fs`` replaces the s3 filesystem (tests use fsspec's ``memory://``). Raises
    :class:`LookupError` with a user-facing message when nothing usable is there.
    """
    try:
        uri = parse_uri(raw_uri)
    except UriError as err:
        raise LookupError(str(err)) from None
    fs, root = _filesystem(uri, pvc_root=pvc_root, remote_fs=remote_fs)
    if fs.isfile(root):
        found = file_kind(root)
        if found is None:
            raise LookupError(f"unsupported file type; expected one of {_suffix_list()} (optionally .gz)")
        return Resolved(files=[_data_file(fs, root, raw_uri, found)], skipped=[])
    # Compare listings against the filesystem's own spelling of the root (memory:// adds a leading "/").
    base = str(fs._strip_protocol(root)).rstrip("/")
    if fs.isdir(base):
        paths = [p for p in fs.find(base) if _visible(p, under=base)]
    else:  # a prefix of file names, e.g. s3://bucket/data/train- for train-00000.jsonl ...
        parent = base.rsplit("/", 1)[0] if "/" in base else ""
        listing = fs.find(parent) if parent and fs.isdir(parent) else []
        paths = [p for p in listing if p.startswith(base) and _visible(p, under=parent)]
    files: list[DataFile] = []
    skipped: list[str] = []
    for path in sorted(paths):
        uri_of_file = raw_uri.rstrip("/") + path[len(base) :]
        found = file_kind(path)
        if found is None:
            skipped.append(uri_of_file)
        else:
            files.append(_data_file(fs, path, uri_of_file, found))
    if not files:
        what = "no such file, directory or prefix" if not paths else "no data files"
        raise LookupError(f"{what} ({_suffix_list()})")
    return Resolved(files=files, skipped=skipped)


def _filesystem(
    uri: StorageUri, *, pvc_root: PurePosixPath, remote_fs: AbstractFileSystem | None
) -> tuple[AbstractFileSystem, str]:
    path = local_path(uri, pvc_root=pvc_root)
    if path is not None:
        return LocalFileSystem(), str(path)
    if uri.scheme != "s3":
        raise LookupError(f"{uri.scheme}:// is not a dataset location; use file://, pvc:// or s3://")
    if remote_fs is not None:
        return remote_fs, f"{uri.authority}/{uri.path}"
    try:
        import fsspec

        fs = fsspec.filesystem("s3")
    except ImportError as err:  # s3fs is only in the trainer image
        raise DataConfigError(f"cannot read {uri.raw}: s3 support (s3fs) is not installed: {err}") from None
    return fs, f"{uri.authority}/{uri.path}"


def _visible(path: str, *, under: str) -> bool:
    """Skip hidden and marker files (".DS_Store", "_SUCCESS", ".crc") anywhere below the root."""
    relative = path[len(under) :].strip("/")
    return not any(part.startswith((".", "_")) for part in relative.split("/") if part)


def _data_file(fs: AbstractFileSystem, path: str, uri: str, found: tuple[FileKind, bool]) -> DataFile:
    kind, gzipped = found
    return DataFile(uri=uri, kind=kind, gzipped=gzipped, fs=fs, path=path)


def _suffix_list() -> str:
    return ", ".join(KINDS_BY_SUFFIX)


def read_file_bytes(data_file: DataFile) -> bytes:
    """The file's bytes as stored (compressed if it is); these are what the dataset hash covers."""
    with data_file.fs.open(data_file.path, "rb") as handle:
        content: bytes = handle.read()
    return content


def sha256_hex(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


def read_records(data_file: DataFile, content: bytes) -> Iterator[RawRecord]:
    """Every record of a file, in order. A file-level problem is yielded as one record with an error.

    Sources are "<uri>:<line>" for JSON Lines and CSV (the physical line the record starts on) and
    "<uri>:#<n>" (1-based record number) for JSON arrays and Parquet, which have no meaningful lines.
    """
    if data_file.gzipped:
        try:
            content = gzip.decompress(content)
        except (OSError, EOFError) as err:
            yield RawRecord(source=data_file.uri, value=None, error=f"not a valid gzip file: {err}")
            return
    if data_file.kind == "parquet":
        yield from _parquet_records(data_file.uri, content)
        return
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = content[: err.start].count(b"\n") + 1
        yield RawRecord(source=f"{data_file.uri}:{line}", value=None, error="not valid UTF-8 text")
        return
    if data_file.kind == "jsonl":
        yield from _jsonl_records(data_file.uri, text)
    elif data_file.kind == "json":
        yield from _json_records(data_file.uri, text)
    else:
        yield from _csv_records(data_file.uri, text)


def _jsonl_records(uri: str, text: str) -> Iterator[RawRecord]:
    # Split on "\n" only: str.splitlines() also splits on U+2028 and friends, which JSON allows unescaped.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        source = f"{uri}:{number}"
        try:
            yield RawRecord(source=source, value=json.loads(line))
        except json.JSONDecodeError as err:
            yield RawRecord(source=source, value=None, error=f"invalid JSON: {err.msg} (column {err.colno})")


def _json_records(uri: str, text: str) -> Iterator[RawRecord]:
    try:
        document: Any = json.loads(text)
    except json.JSONDecodeError as err:
        if err.lineno > 1 and text.lstrip().startswith("{"):
            # Many ".json" datasets are really JSON Lines; read them as such.
            yield from _jsonl_records(uri, text)
            return
        yield RawRecord(source=f"{uri}:{err.lineno}", value=None, error=f"invalid JSON: {err.msg} (column {err.colno})")
        return
    if not isinstance(document, list):
        yield RawRecord(
            source=uri,
            value=None,
            error=f"a .json file must hold an array of records (or JSON Lines), got {json_type(document)}",
        )
        return
    for number, value in enumerate(document, start=1):
        yield RawRecord(source=f"{uri}:#{number}", value=value)


def _parquet_records(uri: str, content: bytes) -> Iterator[RawRecord]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        rows = pq.read_table(io.BytesIO(content)).to_pylist()
    except (pa.ArrowException, OSError) as err:
        yield RawRecord(source=uri, value=None, error=f"not a readable Parquet file: {err}")
        return
    for number, row in enumerate(rows, start=1):
        yield RawRecord(source=f"{uri}:#{number}", value=row)


def _csv_records(uri: str, text: str) -> Iterator[RawRecord]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        if not reader.fieldnames:
            return
        start = reader.line_num + 1
        for row in reader:
            source = f"{uri}:{start}"
            start = reader.line_num + 1
            if None in row:
                yield RawRecord(source=source, value=None, error="row has more fields than the header")
            else:
                yield RawRecord(source=source, value=dict(row))
    except csv.Error as err:
        yield RawRecord(source=f"{uri}:{reader.line_num}", value=None, error=f"invalid CSV: {err}")


def json_type(value: object) -> str:
    """JSON's name for a value's type, for messages users can match against their file."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__
