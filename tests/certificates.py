"""A throwaway certificate authority for TLS tests on loopback.

Keys are ECDSA P-256, which generate in about a millisecond::

    ca = CertificateAuthority()
    server = ca.issue_server(valid_for=timedelta(days=5))
    cert_file, key_file = server.write(tmp_path, "server")
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["CertificateAuthority", "IssuedCertificate"]

# Backdating notBefore absorbs clock differences, as real CAs do.
BACKDATE = datetime.timedelta(hours=1)


@dataclasses.dataclass(frozen=True)
class IssuedCertificate:
    cert_pem: str
    key_pem: str

    def write(self, folder: Path, stem: str) -> tuple[Path, Path]:
        """Write ``<stem>.crt`` and ``<stem>.key`` into ``folder``; return the paths."""
        cert_file = folder / f"{stem}.crt"
        key_file = folder / f"{stem}.key"
        cert_file.write_text(self.cert_pem)
        key_file.write_text(self.key_pem)
        return cert_file, key_file


class CertificateAuthority:
    """A self-signed CA that issues server and client certificates."""

    def __init__(self, common_name: str = "alarminati test CA") -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        self._name = name
        public_key = self._key.public_key()
        builder = _base_builder(name, public_key, datetime.timedelta(days=3650))
        builder = builder.issuer_name(name)
        builder = builder.add_extension(
            x509.BasicConstraints(ca=True, path_length=None), critical=True
        )
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
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
        self._cert = builder.sign(self._key, hashes.SHA256())
        # The CA certificate, PEM encoded: what ca.crt or a CA file contains.
        self.cert_pem = self._cert.public_bytes(serialization.Encoding.PEM).decode()

    def write(self, folder: Path, name: str = "ca.crt") -> Path:
        file = folder / name
        file.write_text(self.cert_pem)
        return file

    def issue_server(
        self,
        hosts: Iterable[str] = ("127.0.0.1", "localhost"),
        *,
        valid_for: datetime.timedelta = datetime.timedelta(days=365),
    ) -> IssuedCertificate:
        """Issue a server certificate for ``hosts`` (IP addresses or DNS names)."""
        names: list[x509.GeneralName] = []
        for host in hosts:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                names.append(x509.DNSName(host))
        return self._issue(
            common_name=next(iter(hosts)),
            valid_for=valid_for,
            usage=ExtendedKeyUsageOID.SERVER_AUTH,
            alt_names=names,
        )

    def issue_client(self, common_name: str) -> IssuedCertificate:
        """Issue a client certificate; Kubernetes takes the user name from the CN."""
        return self._issue(
            common_name=common_name,
            valid_for=datetime.timedelta(days=365),
            usage=ExtendedKeyUsageOID.CLIENT_AUTH,
            alt_names=[],
        )

    def _issue(
        self,
        *,
        common_name: str,
        valid_for: datetime.timedelta,
        usage: x509.ObjectIdentifier,
        alt_names: list[x509.GeneralName],
    ) -> IssuedCertificate:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = _base_builder(name, key.public_key(), valid_for)
        builder = builder.issuer_name(self._name)
        builder = builder.add_extension(
            x509.BasicConstraints(ca=False, path_length=None), critical=True
        )
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()),
            critical=False,
        )
        if alt_names:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(alt_names), critical=False
            )
        cert = builder.sign(self._key, hashes.SHA256())
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        return IssuedCertificate(cert_pem=cert_pem.decode(), key_pem=key_pem.decode())


def _base_builder(
    name: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    valid_for: datetime.timedelta,
) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    not_after = now + valid_for
    # An already expired certificate (negative valid_for) still starts first.
    not_before = min(now - BACKDATE, not_after - datetime.timedelta(days=1))
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False
        )
    )
