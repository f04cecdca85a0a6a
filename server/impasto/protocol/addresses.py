"""Server addresses as users write them: `host:port` (plaintext), `https://host:port` (TLS), the pairing
string `impasto-server --remote` prints (`impasto://host:port?token=…&sha256=…`: TLS to the server whose
certificate has that SHA-256, with that token), or several of them separated by commas."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
from dataclasses import dataclass
from urllib.parse import parse_qs, quote

DEFAULT_PORT = 50051
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"
PAIRING_SCHEME = "impasto://"
_FINGERPRINT = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    tls: bool
    token: str | None = None  # from a pairing string
    fingerprint: str | None = None  # a pairing string's: SHA-256 of the server's certificate, hex

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def __str__(self) -> str:
        """The address as a sentence names it: never the token."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'https://' if self.tls and not self.fingerprint else ''}{host}:{self.port}"


def resolve_address(address: str | None) -> str:
    """The address given, else $IMPASTO_SERVER, else this machine's default port."""
    return address or os.environ.get("IMPASTO_SERVER") or DEFAULT_ADDRESS


def addresses(address: str | None) -> list[str]:
    """Several servers may be given separated by commas (`a:50051,https://b:50051`)."""
    return [part.strip() for part in resolve_address(address).split(",") if part.strip()]


def parse_address(address: str) -> Address:
    """`host:port`, `[v6]:port`, `https://host:port` or a pairing string; the port defaults to 50051.
    ValueError for a pairing string without its token or fingerprint (a line cut short in copying)."""
    if address.startswith(PAIRING_SCHEME):
        return _parse_pairing(address)
    tls = address.startswith("https://")
    rest = address.split("://", 1)[-1].rstrip("/")
    if rest.startswith("["):  # [IPv6]:port
        host, _, port = rest[1:].partition("]:")
    else:
        host, _, port = rest.rpartition(":")
    if not host:
        host, port = rest, ""
    return Address(host, int(port) if port.isdigit() else DEFAULT_PORT, tls)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def pairing_string(host: str, port: int, token: str, fingerprint: str) -> str:
    """What `impasto-server --remote` prints and clients take as an address."""
    host = f"[{host}]" if ":" in host else host
    return f"{PAIRING_SCHEME}{host}:{port}?token={quote(token, safe='')}&sha256={fingerprint}"


def certificate_fingerprint(der: bytes) -> str:
    """SHA-256 of a certificate in DER form, lower-case hex: what a pairing string pins."""
    return hashlib.sha256(der).hexdigest()


def _parse_pairing(text: str) -> Address:
    """A pairing string; its token may have been taken out to be kept apart (`split_token`)."""
    place, _, query = text[len(PAIRING_SCHEME) :].partition("?")
    fields = parse_qs(query)
    fingerprint = fields.get("sha256", [""])[0].replace(":", "").lower()
    if not _FINGERPRINT.fullmatch(fingerprint):
        raise ValueError(
            "that pairing string is incomplete: it needs its sha256=… part; copy the whole line "
            "`impasto-server --remote` printed"
        )
    plain = parse_address(place.rstrip("/"))
    token = fields.get("token", [""])[0] or None
    return Address(plain.host, plain.port, tls=True, token=token, fingerprint=fingerprint)


def split_token(address: str) -> tuple[str, str | None]:
    """A pairing string without its token, and the token: so that the token can be kept where secrets
    are kept, and the rest where settings are. Any other address comes back as it is, with None."""
    if not address.startswith(PAIRING_SCHEME):
        return address, None
    parsed = _parse_pairing(address)
    host = f"[{parsed.host}]" if ":" in parsed.host else parsed.host
    return f"{PAIRING_SCHEME}{host}:{parsed.port}?sha256={parsed.fingerprint}", parsed.token


def display_address(address: str) -> str:
    """An address as a sentence may name it: a pairing string without its secrets."""
    try:
        return str(parse_address(address)) if address.startswith(PAIRING_SCHEME) else address
    except ValueError:
        return address.split("?", 1)[0]
