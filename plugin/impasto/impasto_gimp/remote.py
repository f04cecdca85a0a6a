"""What the plug-in takes from Impasto's network client, and what it makes of the procedure's arguments
for it: the connection, the style and the job's settings.

The client (vendor/impasto/client.py, pure Python) and its launcher of the local server
(vendor/impasto/launcher.py, standard library only) know nothing of GIMP; this is the only module of the
plug-in that imports them, so the rest of the plug-in imports their names from here.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

from gi.repository import Gimp
from impasto.client import Client, RemoteJob, impasto_answers
from impasto.launcher import IDLE_EXIT_MINUTES, LaunchError, ensure_local_server
from impasto.protocol import (
    DEFAULT_ADDRESS,
    NO_PREVIEWS,
    PREVIEW_SIDE,
    Image,
    ImageHeader,
    ImpastoError,
    Info,
    JobPlan,
    Kind,
    Preview,
    Progress,
    Queued,
    Settings,
    Started,
    StyleChoice,
    addresses,
    display_address,
    parse_address,
    split_token,
)

__all__ = [
    "DEFAULT_ADDRESS",
    "FAILURES",
    "IDLE_EXIT_MINUTES",
    "NO_PREVIEWS",
    "PREVIEW_SIDE",
    "Client",
    "Image",
    "ImageHeader",
    "ImpastoError",
    "Info",
    "JobPlan",
    "Kind",
    "LaunchError",
    "Preview",
    "Progress",
    "Queued",
    "RemoteJob",
    "Settings",
    "Started",
    "Style",
    "Tls",
    "addresses",
    "chosen_style",
    "connect",
    "display_address",
    "ensure_local_server",
    "impasto_answers",
    "job_settings",
    "parse_address",
    "preview_settings",
    "sentence",
    "split_token",
    "style_chosen",
    "style_file_path",
    "style_title",
]

# What a run or a preview can end with; each carries a sentence for the user.
FAILURES = (ImpastoError, LaunchError, OSError, ValueError)


def sentence(error: Exception) -> str:
    """What the user reads: a server's or the client's sentence in GIMP's words (fields, not flags)."""
    text = error.sentence("gimp") if isinstance(error, ImpastoError) else str(error)
    return text[:1].upper() + text[1:]


@dataclasses.dataclass(frozen=True)
class Tls:
    """The config's TLS settings as plain values, read on GTK's thread: the preview's, the cost line's and
    the connect's workers must not touch the config, which GTK's thread changes meanwhile (a plug-in
    crashed that way, under load)."""

    ca: str | None  # the certificate file's path; None: the system's roots
    insecure: bool

    @classmethod
    def of(cls, config: Gimp.ProcedureConfig) -> Tls:
        ca = config.get_property("tls-ca")
        return cls(ca.get_path() if ca is not None else None, config.get_property("insecure"))


def connect(tls: Tls, address: str, token: str | None, timeout: float = 10.0) -> Client:
    """A Client with these TLS settings. Raises ImpastoError where the token would go in clear to another
    machine without `insecure`."""
    ca_path = Path(tls.ca) if tls.ca else None
    if ca_path is not None and not ca_path.is_file():
        raise ValueError(f"The TLS certificate {ca_path} cannot be read; choose the server's PEM file.")
    return Client(address, token=token or None, tls_ca=ca_path, timeout=timeout, insecure=tls.insecure)


@dataclasses.dataclass(frozen=True)
class Style:
    """The style a job sends: a preset, or an image file uploaded with the job."""

    choice: StyleChoice
    uploads: tuple[Image, ...]
    name: str  # a style file's name without its extension, or the preset's id

    def start(self, client: Client, content: Image, settings: Settings) -> RemoteJob:
        return client.stylize(content, [self.choice], settings, self.uploads)

    def plan(
        self, client: Client, content: ImageHeader, settings: Settings, upload_size: tuple[int, int] = (0, 0)
    ) -> JobPlan:
        """What the job would do and cost on `client`'s server, from sizes alone; `upload_size`: a style
        image's width and height, (0, 0) where unknown."""
        uploads = [ImageHeader("encoded", len(image.data), *upload_size) for image in self.uploads]
        return client.plan(content, [self.choice], settings, uploads)


def style_file_path(config: Gimp.ProcedureConfig) -> str | None:
    """The style image file chosen, or None."""
    style_file = config.get_property("style-file")
    return style_file.get_path() if style_file is not None and style_file.get_path() else None


def style_chosen(config: Gimp.ProcedureConfig) -> bool:
    """Whether a style is chosen: a style file, or a preset (which the server may still not know)."""
    return style_file_path(config) is not None or bool(config.get_property("style").strip())


def chosen_style(config: Gimp.ProcedureConfig) -> Style:
    path = style_file_path(config)
    if path is not None:
        try:
            with open(path, "rb") as f:
                image = Image(f.read(), encoded=True)
        except OSError as error:
            raise ValueError(
                f"The style image {path} cannot be read ({error.strerror}); choose another file in the Style "
                "image field."
            ) from error
        return Style(StyleChoice(upload=0), (image,), os.path.splitext(os.path.basename(path))[0])
    preset = config.get_property("style").strip()
    if not preset:
        raise ValueError("Choose a style: one of the server's presets, or a style image file.")
    return Style(StyleChoice(preset_id=preset), (), preset)


def style_title(client: Client, style: Style) -> str:
    """What the result is called: a preset's title in the server's list ("The Scream"), else its name."""
    preset_id = style.choice.preset_id
    if preset_id is None:
        return style.name
    return next((p.title for p in client.styles() if p.id == preset_id and p.title), style.name)


def job_settings(config: Gimp.ProcedureConfig, **changes) -> Settings:
    """The job's settings from the procedure's arguments (whose 0 is the server's default); `changes`
    replace some (the preview's)."""
    settings = Settings(
        strength=config.get_property("strength"),
        iterations=config.get_property("iterations") or None,
        size=config.get_property("size") or None,
        full_size=config.get_property("full-size"),
        preserve_colors=config.get_property("preserve-colors"),
        seed=config.get_property("seed"),
    )
    return dataclasses.replace(settings, **changes)


def preview_settings(config: Gimp.ProcedureConfig, long_side: int) -> Settings:
    """The settings of OK's job, for only its beginning (its first scale), sent back small.
    `long_side`: that of the part of the layer OK paints. At full size the preview's working size is that
    long side, so that its scales are the full-size job's first ones; the preview's layer may then be a
    smaller copy (the server brings it to the working size itself)."""
    full_size = {"size": long_side, "full_size": False} if config.get_property("full-size") else {}
    return job_settings(config, preview_only=True, preview_seconds=NO_PREVIEWS, **full_size)
