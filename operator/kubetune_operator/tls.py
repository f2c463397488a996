"""The report endpoint's TLS identity: a certificate given by the platform, or one the operator makes.

Trainer pods trust whatever CA the operator puts in their ConfigMap (``report-ca.crt``), so no cluster-wide
trust store is involved. Given a directory holding ``tls.crt``, ``tls.key`` and ``ca.crt`` (a
cert-manager Secret mounted as files), the operator serves that. Without one it makes a CA and a serving
certificate at start-up, in memory: a restarted operator has a new CA, re-writes every running job's
ConfigMap with it, the kubelet updates the mounted file within about a minute, and the trainer re-reads
it when a handshake fails; reports sent meanwhile are retried, never lost.
"""

from __future__ import annotations

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

# The made certificate outlives any training run; the operator makes a new one at every start.
VALIDITY = datetime.timedelta(days=365)


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


def make_identity(*, hosts: tuple[str, ...], now: datetime.datetime | None = None) -> ServingIdentity:
    """A new CA and a certificate signed by it for ``hosts`` (DNS names or IP addresses)."""
    start = (now or datetime.datetime.now(datetime.UTC)) - datetime.timedelta(minutes=5)  # clock skew
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubetune reports CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
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
        .sign(ca_key, hashes.SHA256())
    )
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
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + VALIDITY)
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return ServingIdentity(
        ca_pem=ca.public_bytes(pem).decode("ascii"),
        cert_pem=cert.public_bytes(pem).decode("ascii"),
        key_pem=key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode("ascii"),
    )
