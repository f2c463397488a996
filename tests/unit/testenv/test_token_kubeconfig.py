"""Kubeconfigs: the admin one embeds certificates; a ServiceAccount one reuses its cluster entry."""

from __future__ import annotations

import base64
from pathlib import Path

from kubetune_testenv import kubeconfig


def test_token_kubeconfig_keeps_the_server_and_ca_and_drops_the_client_cert(tmp_path: Path) -> None:
    for name in ("ca.crt", "admin.crt", "admin.key"):
        (tmp_path / name).write_text(f"-- {name} --")
    admin = kubeconfig.admin_kubeconfig(
        server="https://127.0.0.1:6443",
        ca_cert=tmp_path / "ca.crt",
        client_cert=tmp_path / "admin.crt",
        client_key=tmp_path / "admin.key",
    )
    path = kubeconfig.write(admin, tmp_path / "admin.kubeconfig")
    assert path.stat().st_mode & 0o077 == 0

    token = kubeconfig.token_kubeconfig(
        base=kubeconfig.read(path), base_dir=tmp_path, user="system:serviceaccount:ns:sa", token="abc"
    )
    cluster = token["clusters"][0]["cluster"]
    assert cluster["server"] == "https://127.0.0.1:6443"
    assert base64.b64decode(cluster["certificate-authority-data"]) == b"-- ca.crt --"
    assert token["users"][0]["user"] == {"token": "abc"}
    assert token["current-context"] == "system:serviceaccount:ns:sa"


def test_token_kubeconfig_reads_a_relative_ca_file(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("CA")
    base = {
        "current-context": "x",
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "clusters": [{"name": "c", "cluster": {"server": "https://h", "certificate-authority": "ca.pem"}}],
        "users": [{"name": "u", "user": {}}],
    }
    token = kubeconfig.token_kubeconfig(base=base, base_dir=tmp_path, user="u2", token="t")
    assert base64.b64decode(token["clusters"][0]["cluster"]["certificate-authority-data"]) == b"CA"
