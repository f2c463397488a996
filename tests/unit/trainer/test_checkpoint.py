"""Checkpoint directories: complete only with their marker, published atomically, pruned to keepLast."""

from __future__ import annotations

from pathlib import Path

import fsspec
import pytest
import torch
from kubetune_trainer.checkpoint import MARKER, CheckpointStore, TrainingPosition, TrainingState, load_checkpoint
from kubetune_trainer.storage import Location, resolve_location


def _position(step: int) -> TrainingPosition:
    return TrainingPosition(
        step=step,
        epoch=0,
        step_in_epoch=step,
        trained_tokens=10 * step,
        world_size=1,
        gradient_accumulation_steps=1,
        last_loss=1.0,
    )


class _OneRank:
    rank = 0
    is_main = True

    def barrier(self) -> None:
        pass


def _save(
    store: CheckpointStore,
    step: int,
    model: torch.nn.Module,
    *,
    optimizer_steps: int = 0,
    extra: dict[str, torch.Tensor] | None = None,
) -> str:
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    for _ in range(optimizer_steps):  # AdamW keeps tensors (moments) in its state only after a step
        model(torch.ones(1, 2)).sum().backward()
        optimizer.step()
    state = TrainingState(
        position=_position(step),
        weights=dict(model.named_parameters()),
        optimizer=optimizer,
        scheduler=scheduler,
        extra=extra or {},
    )
    uri = store.save(state, ranks=_OneRank())
    assert uri is not None
    return uri


def test_newest_complete_checkpoint_is_found_and_older_ones_pruned(tmp_path: Path) -> None:
    store = CheckpointStore(
        resolve_location(f"file://{tmp_path}", field="f").child("checkpoints"),
        keep_last=2,
        cache_dir=tmp_path / "cache",
    )
    model = torch.nn.Linear(2, 2)
    for step in (2, 4, 6):
        uri = _save(store, step, model)
    assert uri == f"file://{tmp_path}/checkpoints/step-00000006"
    assert store.complete_steps() == [4, 6]
    # An interrupted write (no marker) is never resumed from.
    (tmp_path / "checkpoints" / "step-00000008").mkdir()
    latest = store.latest()
    assert latest is not None and latest.position == _position(6)
    assert not list((tmp_path / "checkpoints").glob(".tmp-*"))


def test_loading_restores_weights_and_rng(tmp_path: Path) -> None:
    store = CheckpointStore(resolve_location(f"file://{tmp_path}", field="f"), keep_last=1, cache_dir=tmp_path)
    model = torch.nn.Linear(2, 2)
    torch.manual_seed(7)
    _save(store, 1, model)
    expected_draw = torch.rand(3)
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.weight.zero_()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    info = store.latest()
    assert info is not None
    assert load_checkpoint(
        info, model=model, optimizer=optimizer, scheduler=scheduler, rank=0, device=torch.device("cpu")
    )
    torch.testing.assert_close(model.weight, saved["weight"])
    torch.testing.assert_close(torch.rand(3), expected_draw)
    # Another rank's RNG file does not exist: the caller must reseed.
    assert not load_checkpoint(
        info, model=model, optimizer=optimizer, scheduler=scheduler, rank=1, device=torch.device("cpu")
    )


def test_a_rank_under_torchrun_loads_onto_its_indexed_cpu_device(tmp_path: Path) -> None:
    # Accelerate reports torch.device("cpu", 0) for a CPU rank started by torchrun (what every pod runs).
    store = CheckpointStore(resolve_location(f"file://{tmp_path}", field="f"), keep_last=1, cache_dir=tmp_path)
    model = torch.nn.Linear(2, 2)
    _save(store, 1, model, optimizer_steps=1)
    saved = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.zero_()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    info = store.latest()
    assert info is not None
    load_checkpoint(info, model=model, optimizer=optimizer, scheduler=scheduler, rank=0, device=torch.device("cpu", 0))
    torch.testing.assert_close(model.weight, saved)
    assert optimizer.state_dict()["state"][0]["exp_avg"].device == torch.device("cpu")


def test_remote_checkpoints_upload_the_marker_last_and_download_for_resume(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    location = Location(uri="memory://bucket/run/checkpoints", fs=fs, path="/bucket/run/checkpoints", local=None)
    store = CheckpointStore(location, keep_last=1, cache_dir=tmp_path)
    uploads: list[str] = []
    original = fs.put_file

    def recording_put(lpath: str, rpath: str, **kwargs: object) -> None:
        uploads.append(rpath)
        original(lpath, rpath, **kwargs)

    fs.put_file = recording_put  # type: ignore[method-assign]
    try:
        _save(store, 3, torch.nn.Linear(2, 2))
        _save(store, 5, torch.nn.Linear(2, 2))
    finally:
        fs.put_file = original  # type: ignore[method-assign]

    assert uploads[-1].endswith(f"step-00000005/{MARKER}")
    assert uploads[len(uploads) // 2 - 1].endswith(f"step-00000003/{MARKER}")
    assert store.complete_steps() == [5]
    latest = store.latest()
    assert latest is not None and latest.local_dir.is_dir() and (latest.local_dir / MARKER).is_file()
    fs.rm("/bucket", recursive=True)


def test_publishing_refuses_a_directory_without_its_marker(tmp_path: Path) -> None:
    from kubetune_trainer.storage import publish_dir

    staged = tmp_path / "staged"
    staged.mkdir()
    with pytest.raises(FileNotFoundError, match="marker"):
        publish_dir(staged, resolve_location(f"file://{tmp_path}/dest", field="f"), "x", marker=MARKER)


def test_restore_loads_the_extra_tensors_and_deletes_a_downloaded_copy(tmp_path: Path) -> None:
    fs = fsspec.filesystem("memory")
    location = Location(uri="memory://bucket/run2/checkpoints", fs=fs, path="/bucket/run2/checkpoints", local=None)
    store = CheckpointStore(location, keep_last=1, cache_dir=tmp_path / "cache")
    model = torch.nn.Linear(2, 2)
    reference = torch.tensor([-1.5, -2.25, -3.0])
    _save(store, 4, model, extra={"reference_chosen": reference})
    saved = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.zero_()
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    try:
        restored = store.restore(
            model=model, optimizer=optimizer, scheduler=scheduler, rank=0, device=torch.device("cpu")
        )
        assert restored is not None and restored.position == _position(4) and restored.rng_restored
        torch.testing.assert_close(model.weight, saved)
        torch.testing.assert_close(restored.extra["reference_chosen"], reference)
        # The downloaded copy is gone: a long run resumed many times does not fill the pod's disk.
        assert not any((tmp_path / "cache").rglob("*.safetensors"))
    finally:
        fs.rm("/bucket", recursive=True)


def test_restore_finds_nothing_in_an_empty_location(tmp_path: Path) -> None:
    store = CheckpointStore(resolve_location(f"file://{tmp_path}", field="f"), keep_last=1, cache_dir=tmp_path)
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    assert (
        store.restore(model=model, optimizer=optimizer, scheduler=scheduler, rank=0, device=torch.device("cpu")) is None
    )
