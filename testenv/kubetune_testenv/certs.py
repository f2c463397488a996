"""Throw-away PKI for the test control plane, made with the ``openssl`` command line tool.

ECDSA P-256 keys: generated in milliseconds, accepted by Go's TLS stack, by Python's ssl module and as
service-account signing keys (ES256).
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Short-lived on purpose: these certificates only exist for one test session.
VALID_DAYS = 7

# Names the apiserver is reached by: loopback for tests, the in-cluster service names for completeness.
APISERVER_SANS = (
    "IP:127.0.0.1",
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
)


@dataclass(frozen=True)
class Pki:
    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    service_account_key: Path
    service_account_pub: Path
    kubelet_client_cert: Path  # the apiserver's identity towards kubelets (logs, exec)
    kubelet_client_key: Path


def _openssl(*args: str, cwd: Path) -> None:
    if shutil.which("openssl") is None:
        raise RuntimeError("the 'openssl' command is required to create the test control plane's certificates")
    result = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args)} failed: {result.stderr.strip()}")


def _ec_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path.name, cwd=path.parent)
    path.chmod(0o600)


def _signed_cert(*, directory: Path, name: str, subject: str, extensions: list[str]) -> tuple[Path, Path]:
    key = directory / f"{name}.key"
    cert = directory / f"{name}.crt"
    _ec_key(key)
    ext = directory / f"{name}.ext"
    ext.write_text("\n".join(extensions) + "\n")
    csr = directory / f"{name}.csr"
    _openssl("req", "-new", "-key", key.name, "-subj", subject, "-out", csr.name, cwd=directory)
    _openssl(
        "x509",
        "-req",
        "-in",
        csr.name,
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        str(VALID_DAYS),
        "-sha256",
        "-extfile",
        ext.name,
        "-out",
        cert.name,
        cwd=directory,
    )
    csr.unlink()
    ext.unlink()
    return cert, key


def create_pki(directory: Path, *, extra_sans: tuple[str, ...] = ()) -> Pki:
    """Create a CA, the apiserver's serving cert, an admin client cert and the service-account key pair.

    ``extra_sans`` ("IP:10.0.0.1", ...) are further names the apiserver is reached by: pods on a real
    node dial the ``kubernetes`` Service's ClusterIP, which kube-proxy forwards to the node's address.
    """
    directory.mkdir(parents=True, exist_ok=True)
    _ec_key(directory / "ca.key")
    _openssl(
        "req",
        "-x509",
        "-new",
        "-key",
        "ca.key",
        "-subj",
        "/CN=kubetune-test-ca",
        "-days",
        str(VALID_DAYS),
        "-sha256",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        "ca.crt",
        cwd=directory,
    )
    serving_cert, serving_key = _signed_cert(
        directory=directory,
        name="apiserver",
        subject="/CN=kube-apiserver",
        extensions=[
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "extendedKeyUsage=serverAuth",
            "subjectAltName=" + ",".join((*APISERVER_SANS, *extra_sans)),
        ],
    )
    # O=system:masters is bound to cluster-admin by the apiserver's bootstrap RBAC policy.
    admin_cert, admin_key = _signed_cert(
        directory=directory,
        name="admin",
        subject="/O=system:masters/CN=admin",
        extensions=[
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "extendedKeyUsage=clientAuth",
        ],
    )
    kubelet_client_cert, kubelet_client_key = _signed_cert(
        directory=directory,
        name="apiserver-kubelet-client",
        # A kubelet's webhook authorizer asks the apiserver about this user; system:masters may do it all.
        subject="/O=system:masters/CN=kube-apiserver-kubelet-client",
        extensions=[
            "basicConstraints=critical,CA:FALSE",
            "keyUsage=critical,digitalSignature,keyEncipherment",
            "extendedKeyUsage=clientAuth",
        ],
    )
    sa_key = directory / "sa.key"
    _ec_key(sa_key)
    _openssl("pkey", "-in", sa_key.name, "-pubout", "-out", "sa.pub", cwd=directory)
    return Pki(
        ca_cert=directory / "ca.crt",
        ca_key=directory / "ca.key",
        serving_cert=serving_cert,
        serving_key=serving_key,
        admin_cert=admin_cert,
        admin_key=admin_key,
        service_account_key=sa_key,
        service_account_pub=directory / "sa.pub",
        kubelet_client_cert=kubelet_client_cert,
        kubelet_client_key=kubelet_client_key,
    )


@dataclass(frozen=True)
class NodePki:
    """Credentials of a real node's components, signed by the control plane's CA."""

    kubelet_client_cert: Path  # the kubelet's identity towards the apiserver (Node authorizer)
    kubelet_client_key: Path
    kubelet_serving_cert: Path  # the kubelet's HTTPS endpoint (logs, exec), checked by the apiserver
    kubelet_serving_key: Path
    proxy_cert: Path  # kube-proxy, bound to system:node-proxier by the bootstrap RBAC policy
    proxy_key: Path


_CLIENT = ["basicConstraints=critical,CA:FALSE", "keyUsage=critical,digitalSignature,keyEncipherment"]


def create_node_pki(directory: Path, *, node_name: str, node_ip: str) -> NodePki:
    """Certificates for a kubelet named ``node_name`` at ``node_ip`` and its kube-proxy.

    ``directory`` is the control plane's PKI directory (it holds ``ca.crt`` and ``ca.key``).
    """
    kubelet_cert, kubelet_key = _signed_cert(
        directory=directory,
        name=f"kubelet-{node_name}",
        # The Node authorizer identifies a kubelet by this user name and group.
        subject=f"/O=system:nodes/CN=system:node:{node_name}",
        extensions=[*_CLIENT, "extendedKeyUsage=clientAuth"],
    )
    serving_cert, serving_key = _signed_cert(
        directory=directory,
        name=f"kubelet-serving-{node_name}",
        subject=f"/CN={node_name}",
        extensions=[*_CLIENT, "extendedKeyUsage=serverAuth", f"subjectAltName=IP:{node_ip},DNS:{node_name}"],
    )
    proxy_cert, proxy_key = _signed_cert(
        directory=directory,
        name="kube-proxy",
        subject="/CN=system:kube-proxy",
        extensions=[*_CLIENT, "extendedKeyUsage=clientAuth"],
    )
    return NodePki(
        kubelet_client_cert=kubelet_cert,
        kubelet_client_key=kubelet_key,
        kubelet_serving_cert=serving_cert,
        kubelet_serving_key=serving_key,
        proxy_cert=proxy_cert,
        proxy_key=proxy_key,
    )
