"""The report endpoint's TLS identity: a certificate given by the platform, or one the operator issues.

Trainer pods trust whatever CA the operator puts in their ConfigMap (``report-ca.crt``), so no cluster-wide
trust store is involved. Given a directory holding ``tls.crt``, ``tls.key`` and ``ca.crt`` (a
cert-manager Secret mounted as files), the operator serves that. Otherwise it keeps its own CA in a Secret
of its namespace (made by the first replica that finds none) and issues itself a serving certificate at
every start: the CA, which running pods trust, outlives restarts and is the same for every replica. A CA
made in memory (no Secret configured) changes at every start; running jobs' ConfigMaps are re-written with
it and the kubelet updates the mounted file within about a minute, while the trainer keeps retrying.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from kubetune_operator import k8s
from kubetune_operator.errors import Conflict

# A serving certificate outlives any training run; the operator issues a new one at every start.
VALIDITY = datetime.timedelta(days=365)
# The CA is what running pods trust: ten years, so it never expires under a job.
CA_VALIDITY = datetime.timedelta(days=3650)


class TlsError(ValueError):
    """The given certificate files are missing or unreadable; the message names the file."""


@dataclass(frozen=True, kw_only=True)
class ServingIdentity:
    ca_pem: str
    cert_pem: str
    key_pem: str

    def server_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # ssl loads a certificate chain from files only: write them to a private temporary directory.
        with tempfile.TemporaryDirectory(prefix="kubetune-tls-") as folder:
            cert, key = Path(folder) / "tls.crt", Path(folder) / "tls.key"
            cert.write_text(self.cert_pem, encoding="ascii")
            key.touch(mode=0o600)
            key.write_text(self.key_pem, encoding="ascii")
            context.load_cert_chain(cert, key)
        return context


def load_identity(directory: Path) -> ServingIdentity:
    texts = {}
    for name in ("ca.crt", "tls.crt", "tls.key"):
        try:
            texts[name] = (directory / name).read_text(encoding="ascii")
        except (OSError, UnicodeDecodeError) as err:
            raise TlsError(f"reports TLS: cannot read {directory / name}: {err}") from None
    return ServingIdentity(ca_pem=texts["ca.crt"], cert_pem=texts["tls.crt"], key_pem=texts["tls.key"])


@dataclass(frozen=True, kw_only=True)
class CertificateAuthority:
    cert_pem: str
    key_pem: str


# Keys of the Secret holding the operator's own CA.
CA_CERT_KEY, CA_KEY_KEY = "ca.crt", "ca.key"


def make_ca(*, now: datetime.datetime | None = None) -> CertificateAuthority:
    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(minutes=5)  # clock skew
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubetune reports CA")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + CA_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        # Key identifiers: strict verifiers (Python 3.13's default context among them) require them.
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(cert_pem=_pem(cert), key_pem=_key_pem(key))


def issue(ca: CertificateAuthority, *, hosts: tuple[str, ...], now: datetime.datetime | None = None) -> ServingIdentity:
    """A serving certificate for ``hosts`` (DNS names or IP addresses), signed by ``ca``."""
    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(minutes=5)
    ca_cert = x509.load_pem_x509_certificate(ca.cert_pem.encode("ascii"))
    ca_key = serialization.load_pem_private_key(ca.key_pem.encode("ascii"), password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise TlsError("reports TLS: the CA key is not an EC key")
    key = ec.generate_private_key(ec.SECP256R1())
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0] if hosts else "kubetune")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(min(start + VALIDITY, ca_cert.not_valid_after_utc))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return ServingIdentity(ca_pem=ca.cert_pem, cert_pem=_pem(cert), key_pem=_key_pem(key))


def stored_ca(kube: k8s.Kube, *, namespace: str, name: str) -> CertificateAuthority:
    """The CA in Secret ``namespace/name``; made and stored first when there is none (a replica that loses
    the race to create it reads the winner's)."""
    path = k8s.object_path(api_version="v1", plural="secrets", namespace=namespace, name=name)
    for _ in range(2):
        found = kube.get(path)
        if found is not None:
            data = found.get("data") or {}
            try:
                return CertificateAuthority(
                    cert_pem=base64.b64decode(data[CA_CERT_KEY]).decode("ascii"),
                    key_pem=base64.b64decode(data[CA_KEY_KEY]).decode("ascii"),
                )
            except (KeyError, ValueError) as err:
                raise TlsError(f"reports TLS: Secret {namespace}/{name} lacks a readable {err}") from None
        ca = make_ca()
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/name": "kubetune"}},
            "type": "Opaque",
            "data": {
                CA_CERT_KEY: base64.b64encode(ca.cert_pem.encode("ascii")).decode("ascii"),
                CA_KEY_KEY: base64.b64encode(ca.key_pem.encode("ascii")).decode("ascii"),
            },
        }
        try:
            kube.request(
                "POST", k8s.collection_path(api_version="v1", plural="secrets", namespace=namespace), body=secret
            )
        except Conflict:
            continue  # another replica stored one first: read it
        return ca
    raise TlsError(f"reports TLS: Secret {namespace}/{name} could neither be read nor created")


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode("ascii")


def _key_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode("ascii")
