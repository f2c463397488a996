"""The run's artifact: adapter (or full weights), tokenizer, optional merged model, samples, manifest.

Layout under ``output.destination``::

    adapter/            adapter_model.safetensors + adapter_config.json   (lora, qlora, dora)
    model/              model.safetensors + config.json                   (full)
    merged/             16-bit base with the adapter merged in            (output.mergeAdapter)
    tokenizer/          tokenizer files
    generations.json    greedy answers to held-out prompts, before and after training
    data-report.json    the data layer's report
    eval-report.json    per held-out example losses before/after, the worst examples, length buckets
    eval-report.md      the same, short, for a person
    manifest.json       written LAST, atomically: its presence means the artifact is complete
    checkpoints/        (not part of the artifact)

Files are staged locally first; ``manifest.json`` is deleted before anything is replaced and written
after everything else, so a run killed while writing leaves no manifest that looks complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pydantic import Field

from kubetune.api.base import ApiModel
from kubetune.api.trainer_config import RunIdentity, TrainerConfig
from kubetune.files import write_file_atomically
from kubetune_trainer.storage import Location

MANIFEST = "manifest.json"
ARTIFACT_ENTRIES = (
    "adapter",
    "model",
    "merged",
    "tokenizer",
    "generations.json",
    "data-report.json",
    "eval-report.json",
    "eval-report.md",
)


class BaseModelRecord(ApiModel):
    source: str
    revision: str | None = None
    gguf_file: str | None = None


class FileRecord(ApiModel):
    sha256: str
    size: int = Field(ge=0)


class FinalMetrics(ApiModel):
    loss: float | None = None
    eval_loss: float | None = None
    perplexity: float | None = None
    initial_eval_loss: float | None = None


class PrecisionRecord(ApiModel):
    """The precision asked for and the one trained in; ``reason`` says why they differ."""

    requested: str
    used: str
    reason: str = ""


class GenerationSample(ApiModel):
    prompt: str
    reference: str
    before: str | None
    after: str


class OutputManifest(ApiModel):
    """``manifest.json``: what was trained, from what, with which settings, and every file's sha256."""

    api_version: str = "kubetune.io/v1alpha1"
    kind: str = "OutputManifest"
    complete: bool = True
    created_at: datetime = Field(default_factory=lambda: datetime.now(UTC))
    run: RunIdentity
    base_model: BaseModelRecord
    method: str
    objective: str = "sft"
    precision: PrecisionRecord | None = None
    dataset_sha256: str
    config: dict[str, Any]
    steps: int
    epochs: int
    trained_tokens: int
    metrics: FinalMetrics
    merged: bool
    versions: dict[str, str]
    files: dict[str, FileRecord]


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def file_records(root: Path) -> dict[str, FileRecord]:
    return {
        path.relative_to(root).as_posix(): FileRecord(sha256=sha256_file(path), size=path.stat().st_size)
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def write_generations(path: Path, samples: list[GenerationSample]) -> None:
    path.write_text(json.dumps([s.to_wire() for s in samples], indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_manifest(
    *,
    config: TrainerConfig,
    staged: Path,
    dataset_sha256: str,
    steps: int,
    epochs: int,
    trained_tokens: int,
    metrics: FinalMetrics,
    merged: bool,
    revision: str | None,
    precision: PrecisionRecord | None = None,
) -> OutputManifest:
    import peft
    import torch
    import transformers

    return OutputManifest(
        run=config.run,
        base_model=BaseModelRecord(source=config.model.source, revision=revision, gguf_file=config.model.gguf_file),
        method=config.method.type,
        objective=config.method.objective,
        precision=precision,
        dataset_sha256=dataset_sha256,
        config=config.to_wire(),
        steps=steps,
        epochs=epochs,
        trained_tokens=trained_tokens,
        metrics=metrics,
        merged=merged,
        versions={"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__},
        files=file_records(staged),
    )


def manifest_bytes(manifest: OutputManifest) -> bytes:
    return (json.dumps(manifest.to_wire(), indent=2, sort_keys=True) + "\n").encode("utf-8")


def publish_output(staged: Path, location: Location, *, manifest: OutputManifest) -> str:
    """Replace the artifact at ``location`` with ``staged``'s entries, manifest last; returns its sha256."""
    data = manifest_bytes(manifest)
    location.remove(MANIFEST)
    if location.local is not None:
        location.local.mkdir(parents=True, exist_ok=True)
        for entry in ARTIFACT_ENTRIES:
            target = location.local / entry
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
            if (staged / entry).exists():
                os.replace(staged / entry, target)
        write_file_atomically(location.local / MANIFEST, data)
        shutil.rmtree(staged, ignore_errors=True)
    else:
        for entry in ARTIFACT_ENTRIES:
            location.remove(entry)
        for path in sorted(staged.rglob("*")):
            if path.is_file():
                location.fs.put_file(str(path), f"{location.path}/{path.relative_to(staged).as_posix()}")
        with location.fs.open(f"{location.path}/{MANIFEST}", "wb") as handle:
            handle.write(data)
        shutil.rmtree(staged, ignore_errors=True)
    return hashlib.sha256(data).hexdigest()
