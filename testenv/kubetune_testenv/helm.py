"""The helm binary that ``.ci/build-helm.sh`` builds from the Go module proxy (pinned there)."""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from .versions import cache_root

REPO = Path(__file__).resolve().parents[2]
BUILD_SCRIPT = REPO / ".ci" / "build-helm.sh"


def pinned_helm_version() -> str:
    match = re.search(r'HELM_VERSION="\$\{HELM_VERSION:-(v[0-9.]+)\}"', BUILD_SCRIPT.read_text())
    if match is None:
        raise RuntimeError(f"no pinned HELM_VERSION in {BUILD_SCRIPT}")
    return match.group(1)


def find_helm() -> Path | None:
    """``$HELM``, else the cached build of the pinned version, else ``helm`` on PATH."""
    if os.environ.get("HELM"):
        return Path(os.environ["HELM"])
    cached = cache_root() / "helm" / pinned_helm_version() / "helm"
    if cached.is_file():
        return cached
    on_path = shutil.which("helm")
    return Path(on_path) if on_path else None
