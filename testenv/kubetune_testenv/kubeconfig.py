"""Kubeconfig files: the admin one (client certificate) and per-ServiceAccount ones (bearer token)."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import yaml


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def admin_kubeconfig(*, server: str, ca_cert: Path, client_cert: Path, client_key: Path) -> dict[str, Any]:
    """A self-contained kubeconfig (certificates embedded) for the system:masters admin user."""
    return _kubeconfig(
        server=server,
        ca_data=_b64(ca_cert),
        user="admin",
        credentials={"client-certificate-data": _b64(client_cert), "client-key-data": _b64(client_key)},
    )


def _kubeconfig(
    *, server: str, ca_data: str | None, user: str, credentials: dict[str, str], insecure: bool = False
) -> dict[str, Any]:
    cluster: dict[str, Any] = {"server": server}
    if ca_data:
        cluster["certificate-authority-data"] = ca_data
    if insecure:
        cluster["insecure-skip-tls-verify"] = True
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kubetune-test", "cluster": cluster}],
        "users": [{"name": user, "user": credentials}],
        "contexts": [{"name": user, "context": {"cluster": "kubetune-test", "user": user}}],
        "current-context": user,
    }


def _current_cluster(config: dict[str, Any], base_dir: Path) -> tuple[str, str | None, bool]:
    """Server URL, base64 CA data and insecure flag of the current context's cluster."""
    contexts = {item["name"]: item["context"] for item in config.get("contexts", [])}
    clusters = {item["name"]: item["cluster"] for item in config.get("clusters", [])}
    cluster = clusters[contexts[config["current-context"]]["cluster"]]
    ca_data: str | None = cluster.get("certificate-authority-data")
    if ca_data is None and cluster.get("certificate-authority"):
        ca_path = Path(cluster["certificate-authority"])
        ca_data = _b64(ca_path if ca_path.is_absolute() else base_dir / ca_path)
    return str(cluster["server"]), ca_data, bool(cluster.get("insecure-skip-tls-verify", False))


def token_kubeconfig(*, base: dict[str, Any], base_dir: Path, user: str, token: str) -> dict[str, Any]:
    """A kubeconfig for the same cluster as ``base``'s current context, authenticating with ``token``."""
    server, ca_data, insecure = _current_cluster(base, base_dir)
    return _kubeconfig(server=server, ca_data=ca_data, user=user, credentials={"token": token}, insecure=insecure)


def write(config: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def read(path: Path) -> dict[str, Any]:
    loaded = yaml.safe_load(path.read_text())
    if not isinstance(loaded, dict):
        raise ValueError(f"{path} is not a kubeconfig")
    return loaded
