"""Test certificates made at test time with ``cryptography``: a CA, a server and a client certificate, and a
second, unrelated CA (for "certificate not trusted" tests). Nothing here is ever committed or reused."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Pki:
    """Paths of one test PKI (all PEM except the broker's PKCS12 keystore)."""

    ca: Path
    server_cert: Path
    server_key: Path
    server_p12: Path
    p12_password: str
    client_cert: Path
    client_key: Path
    other_ca: Path  # signs nothing the servers use: a client trusting only it must refuse them


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(_name(cn))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _leaf(
    cn: str, ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, *, server: bool
) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=2))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
    )
    if server:
        b = b.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
    return key, b.sign(ca_key, hashes.SHA256())


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def make_pki(folder: Path, p12_password: str = "test-keystore-pw") -> Pki:
    """A fresh CA, server (127.0.0.1 / localhost), client and unrelated CA under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _ca("finpulse test CA")
    s_key, s_cert = _leaf("127.0.0.1", ca_key, ca, server=True)
    c_key, c_cert = _leaf("finpulse-client", ca_key, ca, server=False)
    _, other = _ca("someone else's CA")
    pem = serialization.Encoding.PEM
    # Java reads PKCS12 with PBES2/AES (JDK 17); the broker keystore carries the chain up to the CA.
    p12 = pkcs12.serialize_key_and_certificates(
        b"broker", s_key, s_cert, [ca], serialization.BestAvailableEncryption(p12_password.encode())
    )
    return Pki(
        ca=_write(folder / "ca.pem", ca.public_bytes(pem)),
        server_cert=_write(folder / "server.pem", s_cert.public_bytes(pem) + ca.public_bytes(pem)),
        server_key=_write(folder / "server.key", _pem_key(s_key)),
        server_p12=_write(folder / "server.p12", p12),
        p12_password=p12_password,
        client_cert=_write(folder / "client.pem", c_cert.public_bytes(pem)),
        client_key=_write(folder / "client.key", _pem_key(c_key)),
        other_ca=_write(folder / "other-ca.pem", other.public_bytes(pem)),
    )
