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


def create_pki(directory: Path) -> Pki:
    """Create a CA, the apiserver's serving cert, an admin client cert and the service-account key pair."""
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
            "subjectAltName=" + ",".join(APISERVER_SANS),
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
    )
