"""A job request as plain data, its bounds, and its image bytes as they arrive.

Everything a client can say is checked here, before any pixel is decoded: counts, sizes and every
number. Clients' defaults (a 0 that means "the server's choice") are resolved by whoever translates
the wire format; here `None` means "the server's default".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from ..engine import RECIPES
from ..library import InvalidStyleId, check_id, quoted, slug
from .budget import Reservation
from .errors import JobError, Kind

MAX_STYLE_WEIGHT = 1e6
STYLE_SCALES = (0.01, 8.0)
PREVIEW_SECONDS = (0.05, 3600.0)
MIN_SIZE = 16


@dataclass(frozen=True)
class Limits:
    max_pixels: int  # per image
    max_size: int  # working long side
    default_size: int
    max_queue: int = 8
    max_iterations: int = 5000
    default_iterations: int = 100
    max_styles: int = 8  # style choices, and style uploads, per request
    max_request_bytes: int = 512 << 20  # announced image bytes of one request
    max_inflight_bytes: int = 4 << 30  # uploads and their decoded pixels, over all requests
    max_strength: float = 100.0
    # Whether `size` may be "full" (the content's own size, tiled where memory is short); ServerInfo's
    # Limits.full_size tells clients.
    full_size: bool = False
    memory_budget: int | None = None  # larger scales run in tiles; None: free memory less a margin


@dataclass(frozen=True)
class ImageSpec:
    """An image announced by a request: raw RGBA8 rows of a known size, or an encoded file."""

    format: Literal["rgba8", "encoded", ""]  # "" is a client that did not say
    total_bytes: int
    width: int = 0  # rgba8 only
    height: int = 0


@dataclass(frozen=True)
class StyleRef:
    preset_id: str | None = None  # a preset of the library, or
    upload: int | None = None  # an index into Request.uploads
    weight: float = 1.0
    save_as: str = ""  # for an upload: also keep it as a preset with this name


@dataclass(frozen=True)
class Request:
    content: ImageSpec
    styles: tuple[StyleRef, ...]
    uploads: tuple[ImageSpec, ...] = ()
    size: int | Literal["full"] | None = None  # working long side; None: the server's default
    iterations: int | None = None  # at the working size; None: the server's default
    strength: float = 1.0
    style_scale: float = 1.0
    preserve_colors: bool = False
    seed: int = 0
    preview_seconds: float | None = 2.0  # None: no previews
    # The CLI's expert options, in-process only; the service never sets them.
    recipe: str = "default"
    optimizer: Literal["lbfgs", "adam"] | None = None
    init: Literal["content", "noise"] = "content"
    init_upload: int | None = None  # start from this upload instead
    memory_budget: int | None = None  # bytes a scale may use (else the server's); larger ones run in tiles
    labels: tuple[str, ...] = ()  # names of the images for messages (file names), content first

    @property
    def images(self) -> tuple[ImageSpec, ...]:
        """Content first, then the uploads: the order of their bytes."""
        return (self.content, *self.uploads)

    def image_name(self, index: int) -> str:
        if index < len(self.labels):
            return self.labels[index]
        return "content image" if index == 0 else f"uploaded image {index}"


def check_request(request: Request, limits: Limits) -> None:
    """Raises JobError for the first thing wrong with `request`; cheap, needs no pixels."""
    _check_counts(request, limits)
    for index, image in enumerate(request.images):
        _check_image(image, request.image_name(index), limits)
    total = sum(image.total_bytes for image in request.images)
    if total > limits.max_request_bytes:
        raise JobError(
            Kind.EXHAUSTED,
            f"the request's images are {total:,} bytes, over this server's limit of "
            f"{limits.max_request_bytes:,} per request",
        )
    for number, style in enumerate(request.styles, 1):
        _check_style(style, number, len(request.uploads))
    if sum(style.weight for style in request.styles) <= 0:
        raise JobError(Kind.INVALID, "the style weights add up to 0; give at least one a positive weight")
    _check_numbers(request, limits)


def _check_counts(request: Request, limits: Limits) -> None:
    if not request.styles:
        raise JobError(Kind.INVALID, "choose at least one style (a preset or an uploaded image)")
    for what, count in (("style choices", len(request.styles)), ("style uploads", len(request.uploads))):
        if count > limits.max_styles:
            raise JobError(
                Kind.EXHAUSTED, f"{count} {what} is over this server's limit of {limits.max_styles}"
            )


def _check_image(image: ImageSpec, name: str, limits: Limits) -> None:
    if image.format == "rgba8":
        pixels = image.width * image.height
        if pixels == 0:
            raise JobError(Kind.INVALID, f"{name} has no pixels ({image.width}×{image.height})")
        if pixels > limits.max_pixels:
            raise JobError(
                Kind.EXHAUSTED,
                f"{name} is {image.width}×{image.height} = {pixels:,} pixels, over this server's "
                f"limit of {limits.max_pixels:,}",
            )
        if image.total_bytes != pixels * 4:
            raise JobError(
                Kind.INVALID,
                f"{name}: {image.width}×{image.height} RGBA8 is {pixels * 4:,} bytes, "
                f"but the header announces {image.total_bytes:,}",
            )
    elif image.format == "encoded":
        if image.total_bytes == 0:
            raise JobError(Kind.INVALID, f"{name} is empty (0 bytes)")
        if image.total_bytes > limits.max_pixels * 4:
            raise JobError(
                Kind.EXHAUSTED,
                f"{name} is a file of {image.total_bytes:,} bytes, larger than any image this server accepts",
            )
    else:
        raise JobError(Kind.INVALID, f"{name}: the pixel format is not set (RGBA8 or ENCODED)")


def _check_style(style: StyleRef, number: int, uploads: int) -> None:
    if (style.preset_id is None) == (style.upload is None):
        raise JobError(Kind.INVALID, f"style {number} must name either a preset or an upload")
    if style.preset_id is not None:
        try:
            check_id(style.preset_id)
        except InvalidStyleId as error:
            raise JobError(Kind.INVALID, str(error)) from None
        if style.save_as:
            raise JobError(Kind.INVALID, "only an uploaded style can be saved as a preset")
    elif not 0 <= style.upload < uploads:
        raise JobError(
            Kind.INVALID, f"style {number} refers to upload {style.upload}, but {uploads} were announced"
        )
    if not (math.isfinite(style.weight) and 0 <= style.weight <= MAX_STYLE_WEIGHT):
        raise JobError(
            Kind.INVALID,
            f"style {number}'s weight must be between 0 and {MAX_STYLE_WEIGHT:g}, got {style.weight}",
        )
    if style.save_as:
        preset_id = slug(style.save_as)
        if not preset_id or len(style.save_as) > 100:
            raise JobError(
                Kind.INVALID,
                f"cannot save a preset named {quoted(style.save_as)}: a name has letters or digits "
                "and at most 100 characters",
            )


def _check_numbers(request: Request, limits: Limits) -> None:
    def within(name: str, value: float, low: float, high: float, kind: Kind = Kind.INVALID) -> None:
        if not (math.isfinite(value) and low <= value <= high):
            raise JobError(kind, f"{name} must be between {low:g} and {high:g}, got {value}")

    if request.size == "full":
        if not limits.full_size:
            raise JobError(Kind.INVALID, "this server does not paint at the content's full size yet")
    elif request.size is not None:
        within("size (the working long side in px)", request.size, MIN_SIZE, math.inf)
        if request.size > limits.max_size:
            raise JobError(
                Kind.EXHAUSTED,
                f"a working size of {request.size} px is over this server's limit of {limits.max_size} px",
            )
    if request.iterations is not None:
        within("iterations", request.iterations, 1, limits.max_iterations)
    within("strength", request.strength, 0, limits.max_strength)
    within("style_scale", request.style_scale, *STYLE_SCALES)
    if request.preview_seconds is not None:
        within("the preview interval (seconds)", request.preview_seconds, *PREVIEW_SECONDS)
    within("seed", request.seed, 0, 2**64 - 1)
    if request.recipe not in RECIPES:
        raise JobError(Kind.INVALID, f"unknown recipe {quoted(request.recipe)}; known: {', '.join(RECIPES)}")
    if request.optimizer not in (None, "lbfgs", "adam"):
        raise JobError(Kind.INVALID, f"unknown optimiser {quoted(str(request.optimizer))}: lbfgs or adam")
    if request.memory_budget is not None and request.memory_budget < 1 << 20:
        raise JobError(Kind.INVALID, f"a memory budget of {request.memory_budget} bytes is below 1 MiB")
    if request.init_upload is not None and not 0 <= request.init_upload < len(request.uploads):
        raise JobError(Kind.INVALID, f"init_upload {request.init_upload} is not an upload")


class Upload:
    """A request's image bytes as they arrive, held against the server's budget of bytes in flight."""

    def __init__(self, request: Request, reservation: Reservation):
        self.request = request
        self.reservation = reservation
        self.buffers = [bytearray() for _ in request.images]

    def add(self, index: int, data: bytes) -> None:
        images = self.request.images
        if not 0 <= index < len(images):
            raise JobError(
                Kind.INVALID, f"a chunk names image {index}, but only {len(images)} were announced"
            )
        buffer = self.buffers[index]
        if len(buffer) + len(data) > images[index].total_bytes:
            raise JobError(
                Kind.INVALID,
                f"{self.request.image_name(index)}: more bytes than the "
                f"{images[index].total_bytes:,} its header announced",
            )
        buffer += data

    @property
    def complete(self) -> bool:
        return all(
            len(b) == image.total_bytes for b, image in zip(self.buffers, self.request.images, strict=True)
        )

    def check_complete(self) -> None:
        for index, (buffer, image) in enumerate(zip(self.buffers, self.request.images, strict=True)):
            if len(buffer) != image.total_bytes:
                raise JobError(
                    Kind.INVALID,
                    f"{self.request.image_name(index)}: the upload ended after {len(buffer):,} of "
                    f"{image.total_bytes:,} bytes",
                )

    def release(self) -> None:
        self.buffers = []
        self.reservation.release()
