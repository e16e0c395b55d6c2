"""A small certificate authority for the broker's TLS (ECDSA P-256, which mosquitto's OpenSSL
accepts): the CA, server certificates for the broker and client certificates whose CN is the
MQTT username (``use_identity_as_username``). Private keys are written 0600 and never logged.
"""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def make_ca(folder: Path, *, cn: str = "loaxa CA", days: int = 3650,
            now: datetime | None = None) -> Issued:
    folder.mkdir(parents=True, exist_ok=True)
    now = now or datetime.now(timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
    out = Issued(folder / "ca.crt", folder / "ca.key")
    _write_key(out.key, key)
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out


def issue(ca: Issued, folder: Path, cn: str, *, server: bool = False,
          hosts: tuple[str, ...] = ("localhost", "127.0.0.1"), days: int = 825,
          now: datetime | None = None, name: str | None = None) -> Issued:
    """A certificate signed by ``ca``: for a broker (``server``, with ``hosts`` as subject
    alternative names) or a client whose CN becomes its MQTT username."""
    folder.mkdir(parents=True, exist_ok=True)
    now = now or datetime.now(timezone.utc)
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca_cert.subject)
         .public_key(key.public_key()).serial_number(x509.random_serial_number())
         .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=days))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
         .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                               else ExtendedKeyUsageOID.CLIENT_AUTH]),
                        critical=False))
    if server:
        sans: list[x509.GeneralName] = []
        for h in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(h)))
            except ValueError:
                sans.append(x509.DNSName(h))
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = b.sign(ca_key, hashes.SHA256())
    stem = name or cn
    out = Issued(folder / f"{stem}.crt", folder / f"{stem}.key")
    _write_key(out.key, key)
    out.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return out


def serial_of(cert: Path) -> int:
    return x509.load_pem_x509_certificate(cert.read_bytes()).serial_number


def not_after(cert: Path) -> datetime:
    return x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc


def write_crl(ca: Issued, path: Path, revoked: list[tuple[int, datetime]], *,
              now: datetime | None = None, days: int = 3650) -> Path:
    """The CA's certificate revocation list (PEM) naming ``revoked`` (serial, when), for the
    broker's ``crlfile``. Written beside and renamed, so the broker never reads half a file.
    Its next update is far off: the broker refuses every client once a CRL is past it."""
    now = now or datetime.now(timezone.utc)
    ca_key = serialization.load_pem_private_key(ca.key.read_bytes(), password=None)
    ca_cert = x509.load_pem_x509_certificate(ca.cert.read_bytes())
    b = (x509.CertificateRevocationListBuilder().issuer_name(ca_cert.subject)
         .last_update(now - timedelta(minutes=5)).next_update(now + timedelta(days=days)))
    for serial, when in revoked:
        b = b.add_revoked_certificate(x509.RevokedCertificateBuilder().serial_number(serial)
                                      .revocation_date(when).build())
    crl = b.sign(ca_key, hashes.SHA256())
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    tmp.chmod(0o644)
    os.replace(tmp, path)
    return path
