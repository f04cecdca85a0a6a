"""Server addresses as users write them: `host:port` (plaintext), `https://host:port` (TLS), or several
of them separated by commas."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass

DEFAULT_PORT = 50051
DEFAULT_ADDRESS = f"127.0.0.1:{DEFAULT_PORT}"


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    tls: bool

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)


def resolve_address(address: str | None) -> str:
    """The address given, else $IMPASTO_SERVER, else this machine's default port."""
    return address or os.environ.get("IMPASTO_SERVER") or DEFAULT_ADDRESS


def addresses(address: str | None) -> list[str]:
    """Several servers may be given separated by commas (`a:50051,https://b:50051`)."""
    return [part.strip() for part in resolve_address(address).split(",") if part.strip()]


def parse_address(address: str) -> Address:
    """`host:port`, `[v6]:port` or `https://host:port`; the port defaults to 50051."""
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
