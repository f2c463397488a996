"""``kubetune train`` and ``kubetune launch``: the trainer's own command line, passed through untouched."""

from __future__ import annotations

from collections.abc import Sequence


def run_trainer(command: str, arguments: Sequence[str]) -> int:
    """Run ``kubetune_trainer``'s ``train`` or ``launch`` (torch is imported only now)."""
    from kubetune_trainer.cli import main as trainer_main

    code: int = trainer_main([command, *arguments])
    return code
