"""`impasto-server --remote`: the secrets a GPU machine serves with, made once and kept, and the one
pairing string that tells a client where the server is, its token and its certificate's fingerprint.

The state folder holds `token`, `tls-key.pem` and `tls-cert.pem`, readable by the server's user only.
The certificate is self-signed for this machine's names and addresses: clients that take the pairing
string pin it by its SHA-256 and need no CA; an `https://` client may trust it with `--tls-ca`.
"""

from __future__ import annotations

import datetime
import ipaddress
import secrets
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from ..files import write_atomically
from ..protocol import certificate_fingerprint

TOKEN_FILE, KEY_FILE, CERT_FILE = "token", "tls-key.pem", "tls-cert.pem"
CERTIFICATE_YEARS = 10  # a pairing lasts until --new-secrets, not until a certificate lapses


@dataclass(frozen=True)
class Secrets:
    token: str
    cert: Path
    key: Path


def secrets_in(folder: Path, renew: bool = False) -> Secrets:
    """The folder's token and certificate, made the first time (or anew with `renew`)."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o700)
    token, key, cert = folder / TOKEN_FILE, folder / KEY_FILE, folder / CERT_FILE
    if renew or not token.is_file():
        write_atomically(token, (secrets.token_urlsafe(32) + "\n").encode())  # mode 0600
    if renew or not (key.is_file() and cert.is_file()):
        key_pem, cert_pem = self_signed_certificate()
        write_atomically(key, key_pem)
        write_atomically(cert, cert_pem)
    return Secrets(token.read_text().strip(), cert, key)


def fingerprint_of(cert: Path) -> str:
    """The SHA-256 of a PEM file's first certificate (the server's own, in a chain)."""
    text = cert.read_text()
    end = "-----END CERTIFICATE-----"
    first = text[: text.index(end) + len(end)] if end in text else text
    return certificate_fingerprint(ssl.PEM_cert_to_DER_cert(first))


def self_signed_certificate() -> tuple[bytes, bytes]:
    """(key, certificate) in PEM: P-256, valid for this machine's names and addresses."""
    # Only the server makes certificates: the client, which runs inside GIMP, stays pure Python.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    names, addresses = machine_names()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    alternatives = [x509.DNSName(name) for name in names] + [x509.IPAddress(a) for a in addresses]
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=365 * CERTIFICATE_YEARS))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        # Its own issuer: a client given it as the CA (`--tls-ca`) verifies it as one.
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    return key_pem, certificate.public_bytes(serialization.Encoding.PEM)


def machine_names() -> tuple[list[str], list[ipaddress.IPv4Address | ipaddress.IPv6Address]]:
    """This machine's host names (the first its own) and addresses, loopback included."""
    names = list(dict.fromkeys(n for n in (socket.gethostname(), socket.getfqdn(), "localhost") if n))
    found = {"127.0.0.1", "::1"}
    route = default_route_address()
    if route:
        found.add(route)
    for name in names[:2]:
        try:
            found.update(info[4][0] for info in socket.getaddrinfo(name, None))
        except OSError:
            continue
    addresses = []
    for text in found:
        try:
            addresses.append(ipaddress.ip_address(text.split("%", 1)[0]))
        except ValueError:
            continue
    return names, sorted(addresses, key=lambda a: (a.version, a))


def default_route_address() -> str | None:
    """The address this machine reaches other networks from (no packet is sent), if it has a route."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: a route lookup only
            return probe.getsockname()[0]
        except OSError:
            return None


def advertised_host(listen_host: str) -> str:
    """The host a pairing string names: the one listened on, where that is one address; else this
    machine's address on its default route, else its name."""
    if listen_host not in ("", "0.0.0.0", "::", "[::]"):
        return listen_host.strip("[]")
    return default_route_address() or socket.getfqdn()
