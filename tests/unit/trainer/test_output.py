"""Publishing the artifact: the manifest goes last, locally (atomic rename) and on object stores."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import fsspec
from kubetune_trainer.output import MANIFEST, FinalMetrics, build_manifest, publish_output
from kubetune_trainer.storage import Location, resolve_location

from kubetune.api.trainer_config import TrainerConfig


def _config(destination: str) -> TrainerConfig:
    return TrainerConfig.model_validate(
        {
            "run": {"name": "r"},
            "model": {"source": "hf://org/model@abc123"},
            "dataset": {"train": ["file:///d.jsonl"]},
            "output": {"destination": destination},
        }
    )


def _staged(tmp_path: Path) -> Path:
    staged = tmp_path / "staged"
    (staged / "adapter").mkdir(parents=True)
    (staged / "adapter" / "adapter_model.safetensors").write_bytes(b"weights")
    (staged / "generations.json").write_text("[]")
    # The reports are written into staging like every other file (so they reach an object store too).
    for name in ("data-report.json", "eval-report.json", "eval-report.md"):
        (staged / name).write_text("{}")
    return staged


def _manifest(config: TrainerConfig, staged: Path) -> object:
    return build_manifest(
        config=config,
        staged=staged,
        dataset_sha256="0" * 64,
        steps=3,
        epochs=1,
        trained_tokens=100,
        metrics=FinalMetrics(loss=1.0),
        merged=False,
        revision="abc123",
    )


def test_local_publish_replaces_old_files_and_hashes_match(tmp_path: Path) -> None:
    dest = tmp_path / "dest"
    (dest / "adapter").mkdir(parents=True)
    (dest / "adapter" / "stale.bin").write_bytes(b"old")
    (dest / MANIFEST).write_text("{}")
    config = _config(f"file://{dest}")
    staged = _staged(tmp_path)
    manifest = _manifest(config, staged)

    sha = publish_output(staged, resolve_location(config.output.destination, field="f"), manifest=manifest)  # type: ignore[arg-type]

    assert not (dest / "adapter" / "stale.bin").exists()
    assert (dest / "data-report.json").is_file() and (dest / "eval-report.md").is_file()
    data = (dest / MANIFEST).read_bytes()
    assert hashlib.sha256(data).hexdigest() == sha
    written = json.loads(data)
    assert written["baseModel"] == {"source": "hf://org/model@abc123", "revision": "abc123"}
    for name, record in written["files"].items():
        assert hashlib.sha256((dest / name).read_bytes()).hexdigest() == record["sha256"]


def test_remote_publish_writes_the_manifest_after_every_file(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    location = Location(uri="memory://bucket/out", fs=fs, path="/bucket/out", local=None)
    order: list[str] = []
    put_file, open_file = fs.put_file, fs.open

    def recording_put(lpath: str, rpath: str, **kwargs: object) -> None:
        order.append(rpath)
        put_file(lpath, rpath, **kwargs)

    def recording_open(path: str, mode: str = "rb", **kwargs: object) -> object:
        if "w" in mode:
            order.append(path)
        return open_file(path, mode, **kwargs)

    fs.put_file, fs.open = recording_put, recording_open  # type: ignore[method-assign]
    try:
        staged = _staged(tmp_path)
        publish_output(staged, location, manifest=_manifest(_config("s3://bucket/out"), staged))  # type: ignore[arg-type]
    finally:
        fs.put_file, fs.open = put_file, open_file  # type: ignore[method-assign]
    assert order[-1] == f"/bucket/out/{MANIFEST}" and order.count(order[-1]) == 1
    assert set(order[:-1]) == {
        "/bucket/out/adapter/adapter_model.safetensors",
        "/bucket/out/generations.json",
        "/bucket/out/data-report.json",
        "/bucket/out/eval-report.json",
        "/bucket/out/eval-report.md",
    }
    assert json.loads(fs.cat_file(f"/bucket/out/{MANIFEST}"))["steps"] == 3
    fs.rm("/bucket", recursive=True)
