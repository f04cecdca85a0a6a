"""The words every part of Impasto shares — the server, the jobs layer, the client, the CLI and the GIMP
plug-in: one settings type (`None` is the server's default), the bounds of every number, one family of
job events, the error kinds with their sentences, server addresses, and the conversions to and from the
contract's messages. Pure Python (protobuf's runtime at most), so that it ships inside the plug-in."""

from . import bounds
from .addresses import (
    DEFAULT_ADDRESS,
    DEFAULT_PORT,
    Address,
    addresses,
    certificate_fingerprint,
    display_address,
    is_loopback,
    pairing_string,
    parse_address,
    resolve_address,
    split_token,
)
from .errors import HINTS, KIND_KEY, ImpastoError, Kind, from_status
from .events import (
    CHUNK_BYTES,
    Device,
    DeviceState,
    Event,
    Failed,
    Info,
    Limits,
    Preset,
    Preview,
    Progress,
    Queued,
    Result,
    Started,
)
from .settings import NO_PREVIEWS, Image, ImageHeader, Parameters, Settings, StyleChoice

__all__ = [
    "CHUNK_BYTES",
    "DEFAULT_ADDRESS",
    "DEFAULT_PORT",
    "HINTS",
    "KIND_KEY",
    "NO_PREVIEWS",
    "Address",
    "Device",
    "DeviceState",
    "Event",
    "Failed",
    "Image",
    "ImageHeader",
    "ImpastoError",
    "Info",
    "Kind",
    "Limits",
    "Parameters",
    "Preset",
    "Preview",
    "Progress",
    "Queued",
    "Result",
    "Settings",
    "Started",
    "StyleChoice",
    "addresses",
    "bounds",
    "certificate_fingerprint",
    "display_address",
    "from_status",
    "is_loopback",
    "pairing_string",
    "parse_address",
    "resolve_address",
    "split_token",
]
