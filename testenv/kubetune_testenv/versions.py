"""Pinned upstream versions of the test control plane and where their binaries are cached."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

_K8S_VERSION = re.compile(r"^v1\.(\d+)\.(\d+)$")


@dataclass(frozen=True)
class Versions:
    """Module versions served by the Go module proxy.

    kubernetes v1.36.3 pairs with its staging modules at v0.36.3 (same minor and patch, major 0).
    etcd v3.6.x is what Kubernetes 1.36 itself vendors (its go.mod pins the v3.6 client).
    """

    kubernetes: str = "v1.36.3"
    etcd: str = "v3.6.16"
    kwok: str = "v0.8.0"
    # Cluster DNS for the real node; v1.14.x is built against client-go v0.35 and runs with v0.36.
    coredns: str = "v1.14.7"

    @property
    def staging(self) -> str:
        """Version of the k8s.io/<staging> modules published alongside ``kubernetes``."""
        match = _K8S_VERSION.match(self.kubernetes)
        if match is None:
            raise ValueError(f"expected a release like v1.36.3, got {self.kubernetes!r}")
        return f"v0.{match.group(1)}.{match.group(2)}"

    @property
    def kube_major_minor(self) -> tuple[str, str]:
        match = _K8S_VERSION.match(self.kubernetes)
        if match is None:
            raise ValueError(f"expected a release like v1.36.3, got {self.kubernetes!r}")
        return "1", match.group(1)

    @property
    def key(self) -> str:
        """Cache directory name: changes whenever any pinned version changes."""
        return f"k8s-{self.kubernetes}_etcd-{self.etcd}_kwok-{self.kwok}_coredns-{self.coredns}"


PINNED = Versions()


def cache_root() -> Path:
    """``$KUBETUNE_CACHE_DIR`` or ``$XDG_CACHE_HOME/kubetune`` (default ``~/.cache/kubetune``)."""
    explicit = os.environ.get("KUBETUNE_CACHE_DIR")
    if explicit:
        return Path(explicit)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "kubetune"


def bin_dir(versions: Versions = PINNED) -> Path:
    """Where the binaries of ``versions`` live: ``<cache>/k8s/<versions.key>/``."""
    return cache_root() / "k8s" / versions.key


@dataclass(frozen=True)
class Binaries:
    """Paths of the built executables.

    ``kube`` is one multi-call binary (see ``gomod.KUBE_MAIN``): control plane, kubectl, kubelet, kube-proxy.
    """

    directory: Path

    @property
    def etcd(self) -> Path:
        return self.directory / "etcd"

    @property
    def kube(self) -> Path:
        return self.directory / "kube"

    @property
    def kwok(self) -> Path:
        return self.directory / "kwok"

    @property
    def coredns(self) -> Path:
        return self.directory / "coredns"

    def all(self) -> tuple[Path, ...]:
        return (self.etcd, self.kube, self.kwok, self.coredns)

    def missing(self) -> list[Path]:
        return [path for path in self.all() if not os.access(path, os.X_OK)]


def binaries(versions: Versions = PINNED) -> Binaries:
    return Binaries(bin_dir(versions))
