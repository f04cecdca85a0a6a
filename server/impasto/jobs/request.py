"""A job request as the jobs layer takes it, the checks it must pass, and its image bytes as they arrive.

Everything a client can say is checked here, before any pixel is decoded: counts, sizes and every
number, against the protocol's bounds and the server's limits. `None` in the settings stays "the
server's default" until the engine's options are made (`Jobs`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ..engine import RECIPES
from ..protocol import NO_PREVIEWS, ImageHeader, ImpastoError, Kind, Limits, Parameters, StyleChoice, bounds
from ..style_files import InvalidStyleId, StyleFile, check_id, quoted, slug
from .budget import Reservation


@dataclass(frozen=True)
class Expert:
    """The CLI's expert options, in-process only: the contract cannot ask for them."""

    recipe: str = "default"
    optimizer: Literal["lbfgs", "adam"] | None = None
    init: Literal["content", "noise"] = "content"
    init_upload: int | None = None  # start from this upload instead
    memory_budget: int | None = None  # bytes a scale may use (else the server's); larger ones run in tiles


@dataclass(frozen=True)
class Request:
    parameters: Parameters
    expert: Expert = Expert()
    labels: tuple[str, ...] = ()  # names of the images for messages (file names), content first

    @property
    def images(self) -> tuple[ImageHeader, ...]:
        return self.parameters.images

    def image_name(self, index: int) -> str:
        if index < len(self.labels):
            return self.labels[index]
        return "content image" if index == 0 else f"uploaded image {index}"


def check_request(request: Request, limits: Limits, planning: bool = False) -> None:
    """Raises ImpastoError for the first thing wrong with `request`; cheap, needs no pixels. `planning`:
    the request is only planned, so no bytes follow and its headers may give total_bytes 0."""
    parameters = request.parameters
    check_counts(len(parameters.styles), len(parameters.uploads), limits)
    for index, image in enumerate(request.images):
        _check_image(image, request.image_name(index), limits, bytes_follow=not planning)
    total = sum(image.total_bytes for image in request.images)
    if total > limits.max_request_bytes:
        raise ImpastoError(
            Kind.TOO_LARGE,
            f"the request's images are {total:,} bytes, over this server's limit of "
            f"{limits.max_request_bytes:,} per request",
        )
    for number, style in enumerate(parameters.styles, 1):
        _check_style(style, number, len(parameters.uploads))
    _check_save_names(parameters.styles)
    if sum(bounds.STYLE_WEIGHT.or_default(style.weight) for style in parameters.styles) <= 0:
        raise ImpastoError(Kind.INVALID, "the style weights add up to 0; give at least one a positive weight")
    _check_settings(request, limits)


def check_counts(styles: int, uploads: int, limits: Limits) -> None:
    """Raises ImpastoError if a request names no style, or more styles or uploads than `limits` allow."""
    if not styles:
        raise ImpastoError(Kind.INVALID, "choose at least one style (a preset or an uploaded image)")
    for what, count in (("style choices", styles), ("style uploads", uploads)):
        if count > limits.max_styles:
            raise ImpastoError(
                Kind.TOO_LARGE, f"{count} {what} is over this server's limit of {limits.max_styles}"
            )


def _check_image(image: ImageHeader, name: str, limits: Limits, bytes_follow: bool) -> None:
    unannounced = not bytes_follow and image.total_bytes == 0
    if image.format == "rgba8":
        pixels = image.width * image.height
        if pixels == 0:
            raise ImpastoError(Kind.INVALID, f"{name} has no pixels ({image.width}×{image.height})")
        if pixels > limits.max_pixels:
            raise ImpastoError(
                Kind.TOO_LARGE,
                f"{name} is {image.width}×{image.height} = {pixels:,} pixels, over this server's "
                f"limit of {limits.max_pixels:,}",
            )
        if image.total_bytes != pixels * 4 and not unannounced:
            raise ImpastoError(
                Kind.INVALID,
                f"{name}: {image.width}×{image.height} RGBA8 is {pixels * 4:,} bytes, "
                f"but the header announces {image.total_bytes:,}",
            )
    elif image.format == "encoded":
        if image.total_bytes == 0 and not unannounced:
            raise ImpastoError(Kind.INVALID, f"{name} is empty (0 bytes)")
        if image.total_bytes > limits.max_pixels * 4:
            raise ImpastoError(
                Kind.TOO_LARGE,
                f"{name} is a file of {image.total_bytes:,} bytes, larger than any image this server accepts",
            )
    else:
        raise ImpastoError(Kind.INVALID, f"{name}: the pixel format is not set (RGBA8 or ENCODED)")


def _check_style(style: StyleChoice, number: int, uploads: int) -> None:
    if (style.preset_id is None) == (style.upload is None):
        raise ImpastoError(Kind.INVALID, f"style {number} must name either a preset or an upload")
    if style.preset_id is not None:
        try:
            check_id(style.preset_id)
        except InvalidStyleId as error:
            raise ImpastoError(Kind.INVALID, str(error)) from None
        if style.save_as_preset:
            raise ImpastoError(Kind.INVALID, "only an uploaded style can be saved as a preset")
    elif not 0 <= style.upload < uploads:
        raise ImpastoError(
            Kind.INVALID, f"style {number} refers to upload {style.upload}, but {uploads} were announced"
        )
    if style.weight is not None:
        _within(bounds.STYLE_WEIGHT, style.weight, what=f"style {number}: ")
    if style.save_as_preset:
        preset_id = slug(style.save_as_preset)
        if not preset_id or len(style.save_as_preset) > 100:
            raise ImpastoError(
                Kind.INVALID,
                f"cannot save a preset named {quoted(style.save_as_preset)}: a name has letters or digits "
                "and at most 100 characters",
            )


def _check_save_names(styles: tuple[StyleChoice, ...]) -> None:
    """Two saves under one id would save the first and then fail: refused before anything is saved."""
    seen: dict[str, str] = {}
    for style in styles:
        name = style.save_as_preset
        if not name:
            continue
        preset_id = slug(name)
        if preset_id in seen:
            raise ImpastoError(
                Kind.INVALID,
                f"the request saves two styles as preset '{preset_id}' ({quoted(seen[preset_id])} and "
                f"{quoted(name)}); give each saved style its own name",
            )
        seen[preset_id] = name


def _check_settings(request: Request, limits: Limits) -> None:
    settings, expert = request.parameters.settings, request.expert
    if settings.full_size:
        if not limits.full_size:
            raise ImpastoError(Kind.INVALID, "this server does not paint at the content's full size")
    elif settings.size is not None:
        # A preview paints only the job's first scale: its size says where they come from, not where
        # painting ends.
        if settings.size > limits.max_size and not settings.preview_only:
            raise ImpastoError(
                Kind.TOO_LARGE,
                f"a working size of {settings.size} px is over this server's limit of {limits.max_size} px",
            )
        _within(bounds.SIZE, settings.size)
    if settings.iterations is not None:
        _within(bounds.ITERATIONS, settings.iterations, high=limits.max_iterations)
    if settings.strength is not None:
        _within(bounds.STRENGTH, settings.strength, high=limits.max_strength)
    if settings.style_scale is not None:
        _within(bounds.STYLE_SCALE, settings.style_scale)
    if settings.preview_seconds not in (None, NO_PREVIEWS):
        _within(bounds.PREVIEW_SECONDS, settings.preview_seconds)
    if settings.seed is not None:
        _within(bounds.SEED, settings.seed)
    if expert.recipe not in RECIPES:
        raise ImpastoError(
            Kind.INVALID, f"unknown recipe {quoted(expert.recipe)}; known: {', '.join(RECIPES)}"
        )
    if expert.optimizer not in (None, "lbfgs", "adam"):
        raise ImpastoError(Kind.INVALID, f"unknown optimiser {quoted(str(expert.optimizer))}: lbfgs or adam")
    if expert.memory_budget is not None:
        _within(bounds.MEMORY_BUDGET, expert.memory_budget)
    if expert.init_upload is not None and not 0 <= expert.init_upload < len(request.parameters.uploads):
        raise ImpastoError(Kind.INVALID, f"init_upload {expert.init_upload} is not an upload")


def _within(bound: bounds.Bound, value: float, high: float | None = None, what: str = "") -> None:
    try:
        bound.check(value, high)
    except ValueError as error:
        raise ImpastoError(Kind.INVALID, f"{what}{error}") from None


class Upload:
    """A request's image bytes as they arrive, held against the server's budget of bytes in flight.

    `presets`: the library presets its styles name, found once when it was admitted (by style index)."""

    def __init__(self, request: Request, reservation: Reservation, presets: dict[int, StyleFile]):
        self.request = request
        self.reservation = reservation
        self.presets = presets
        self.buffers = [bytearray() for _ in request.images]

    def add(self, index: int, data: bytes) -> None:
        images = self.request.images
        if not 0 <= index < len(images):
            raise ImpastoError(
                Kind.INVALID, f"a chunk names image {index}, but only {len(images)} were announced"
            )
        buffer = self.buffers[index]
        if len(buffer) + len(data) > images[index].total_bytes:
            raise ImpastoError(
                Kind.INVALID,
                f"{self.request.image_name(index)}: more bytes than the "
                f"{images[index].total_bytes:,} its header announced",
            )
        buffer += data

    def check_complete(self) -> None:
        for index, (buffer, image) in enumerate(zip(self.buffers, self.request.images, strict=True)):
            if len(buffer) != image.total_bytes:
                raise ImpastoError(
                    Kind.INVALID,
                    f"{self.request.image_name(index)}: the upload ended after {len(buffer):,} of "
                    f"{image.total_bytes:,} bytes",
                )

    def release(self) -> None:
        self.buffers = []
        self.reservation.release()
