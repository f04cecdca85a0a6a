"""What the plug-in takes from Impasto's network client, and what it makes of the procedure's arguments
for it: the connection, the style and the job's settings.

The client (vendor/impasto/client.py, pure Python) knows nothing of GIMP; this is the only module of the
plug-in that imports it, so the rest of the plug-in imports the client's names from here.
"""

import dataclasses
import os
from pathlib import Path

from gi.repository import Gimp
from impasto.client import (
    DEFAULT_ADDRESS,
    Client,
    Image,
    Info,
    Preview,
    Progress,
    Queued,
    RemoteJob,
    ServerError,
    Settings,
    Started,
    StyleSpec,
    addresses,
)

__all__ = [
    "DEFAULT_ADDRESS",
    "FAILURES",
    "Client",
    "Image",
    "Info",
    "Preview",
    "Progress",
    "Queued",
    "RemoteJob",
    "ServerError",
    "Started",
    "addresses",
    "cannot_paint_full_size",
    "chosen_style",
    "connect",
    "job_settings",
    "style_title",
]

# What a run or a preview can end with; each carries a sentence for the user.
FAILURES = (ServerError, OSError, ValueError)


def connect(config: Gimp.ProcedureConfig, address: str, token: str | None, timeout: float = 10.0) -> Client:
    """A Client for the config's TLS settings. Raises InsecureToken (a ValueError) where the token
    would go in clear to another machine without `insecure`."""
    ca = config.get_property("tls-ca")
    ca_path = Path(ca.get_path()) if ca is not None and ca.get_path() else None
    if ca_path is not None and not ca_path.is_file():
        raise ValueError(f"the TLS certificate {ca_path} (tls-ca) cannot be read; choose the server's PEM")
    return Client(
        address,
        token=token or None,
        tls_ca=ca_path,
        timeout=timeout,
        insecure=config.get_property("insecure"),
    )


def chosen_style(config: Gimp.ProcedureConfig) -> tuple[StyleSpec, str]:
    """The style to send, and its short name: a style file's name without its extension, or a preset's id."""
    style_file = config.get_property("style-file")
    if style_file is not None and style_file.get_path():
        path = style_file.get_path()
        with open(path, "rb") as f:
            return StyleSpec(image=Image(f.read(), encoded=True)), os.path.splitext(os.path.basename(path))[0]
    preset = config.get_property("style").strip()
    if not preset:
        raise ValueError("Choose a style: a preset of the server's (style) or an image file (style-file).")
    return StyleSpec(preset=preset), preset


def style_title(client: Client, style: StyleSpec, name: str) -> str:
    """What the result is called: a preset's title in the server's list ("The Scream"), else `name`."""
    if style.preset is None:
        return name
    return next((p.title for p in client.styles() if p.id == style.preset and p.title), name)


def job_settings(config: Gimp.ProcedureConfig, **changes) -> Settings:
    """The job's settings from the procedure's arguments; `changes` replace some (the preview's)."""
    settings = Settings(
        strength=config.get_property("strength"),
        iterations=config.get_property("iterations"),
        size=config.get_property("size"),
        full_size=config.get_property("full-size"),
        preserve_colors=config.get_property("preserve-colors"),
        seed=config.get_property("seed"),
    )
    return dataclasses.replace(settings, **changes)


def cannot_paint_full_size(address: str) -> str:
    return (
        f"The server at {address} cannot paint at the layer's full size; update impasto-server or untick "
        "Full size."
    )
