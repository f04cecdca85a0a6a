"""Image files and bytes <-> the engine's tensors, with alpha kept aside untouched.

Conversions: EXIF orientation is applied; grayscale becomes RGB with equal channels; 16-bit
images (PIL modes I;16 and I) are scaled from 0–65535 to [0, 1] before the engine sees them and
results are written with 8 bits per channel; palette images are expanded to RGB(A).
"""

from __future__ import annotations

import contextlib
import functools
import io
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from .engine.imageops import fit_long_side, resize, resize_8bit
from .protocol import Limits
from .protocol.formats import FORMAT_NAMES, PILLOW_FORMATS, looks_like_image

DEFAULT_MAX_PIXELS = Limits.max_pixels


class ImageError(ValueError):
    """An image cannot be used; the message names it and says why."""


class TooLarge(ImageError):
    """An image has more pixels than the limit allows."""


@dataclass
class Picture:
    # (H, W, 3 or 4), RGB first; a 4th channel is ignored here (an RGBA upload is kept whole, so that
    # it is scaled without a copy). uint8 for 8-bit sources, kept so until needed: a 24-megapixel
    # layer is 288 MB in float32. float32 in [0, 1] for deeper sources.
    pixels: np.ndarray
    alpha: np.ndarray | None  # (H, W) uint8 exactly as in the source, or None
    name: str

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)"""
        return self.pixels.shape[0], self.pixels.shape[1]

    @functools.cached_property
    def rgb(self) -> torch.Tensor:
        """(1, 3, H, W) float32 in [0, 1]."""
        rgb = _tensor(self.pixels)[:, :3]
        return rgb.float() / 255 if rgb.dtype == torch.uint8 else rgb

    def rgb_fitting(self, long_side: int) -> torch.Tensor:
        """`rgb` scaled down to `long_side` (never up); 8-bit sources are scaled while still 8-bit, which
        is several times faster for a large layer than converting it to float first."""
        if max(self.size) <= long_side:
            return self.rgb
        size = fit_long_side(*self.size, long_side)
        if self.pixels.dtype != np.uint8:
            return resize(self.rgb, size)
        return resize_8bit(_tensor(self.pixels), size)[:, :3].float() / 255

    def resized(self, size: tuple[int, int]) -> Picture:
        """This picture at `size` (height, width), its alpha scaled with it."""
        if size == self.size:
            return self
        rgb = self.pixels[:, :, :3]
        if rgb.dtype == np.uint8:
            rgb = _scaled_8bit(rgb, size)
        else:
            rgb = resize(_tensor(np.ascontiguousarray(rgb)), size)[0].permute(1, 2, 0).numpy()
        alpha = None if self.alpha is None else _scaled_8bit(self.alpha[:, :, None], size)[:, :, 0]
        return Picture(rgb, alpha, self.name)


def _scaled_8bit(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W, C) uint8 at `size`, as an (h, w, C) array of its own."""
    scaled = resize_8bit(_tensor(np.ascontiguousarray(pixels)), size)
    return np.ascontiguousarray(scaled[0].permute(1, 2, 0).numpy())


def _tensor(pixels: np.ndarray) -> torch.Tensor:
    """(H, W, C) array -> (1, C, H, W) tensor sharing its memory (channels last)."""
    return torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0)


def load_picture(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageError(f"cannot read image {path}: {error.strerror or error}") from error
    return decode_picture(data, str(path), max_pixels)


def decode_picture(
    data: bytes | bytearray,
    name: str,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    before_decode: Callable[[int, int], None] | None = None,
) -> Picture:
    """`before_decode(width, height)` runs once the header is read, before the pixels are decoded (to
    hold memory for them, or refuse)."""
    if not data:
        raise ImageError(f"{name} is empty (0 bytes)")
    with decoding(name, data):
        image = Image.open(io.BytesIO(data), formats=PILLOW_FORMATS)
        width, height = image.size
        if width * height > max_pixels:
            raise TooLarge(
                f"{name} is {width}×{height} = {width * height:,} pixels, "
                f"over the limit of {max_pixels:,}; scale it down first"
            )
    if before_decode is not None:
        before_decode(width, height)
    with decoding(name, data):
        image.load()
        image = ImageOps.exif_transpose(image)
    if image.width == 0 or image.height == 0:
        raise ImageError(f"{name} has no pixels ({image.width}×{image.height})")
    if image.mode == "F" and not np.isfinite(np.asarray(image)).all():
        raise ImageError(f"{name} has pixels that are not finite numbers (NaN or infinity)")
    return Picture(_rgb_pixels(image), _alpha(image), name)


@contextlib.contextmanager
def decoding(name: str, data: bytes | bytearray = b"") -> Iterator[None]:
    """Turns whatever Pillow raises on a bad file into an ImageError that names the file (`data`: its
    first bytes, which tell a damaged file of a known format from another format)."""
    try:
        with warnings.catch_warnings():
            # Every caller checks its own limit of pixels before decoding. Pillow warns from 89.5 Mpx,
            # under the server's 100 Mpx, and refuses from twice that, which still stands.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    except ImageError:
        raise
    except Image.DecompressionBombError as error:
        raise TooLarge(f"{name} is over the limit of pixels that can be decoded safely ({error})") from error
    except UnidentifiedImageError as error:
        if looks_like_image(data):
            raise ImageError(f"{name} is not a readable image (damaged, or cut short)") from error
        raise ImageError(f"{name} is not a readable image: not a supported image ({FORMAT_NAMES})") from error
    except Exception as error:
        raise ImageError(f"{name} is not a readable image ({error})") from error


def picture_from_rgba8(data: bytes | bytearray, width: int, height: int, name: str) -> Picture:
    """Raw 8-bit RGBA rows, as GIMP hands them to a plug-in."""
    if width <= 0 or height <= 0:
        raise ImageError(f"{name} has no pixels ({width}×{height})")
    if len(data) != width * height * 4:
        raise ImageError(
            f"{name}: {width}×{height} RGBA needs {width * height * 4:,} bytes, got {len(data):,}"
        )
    rgba = np.frombuffer(data, dtype=np.uint8).reshape(height, width, 4)
    return Picture(rgba, rgba[:, :, 3], name)


def _rgb_pixels(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        gray = np.asarray(image, dtype=np.float32) / 65535.0
    elif image.mode == "F":
        gray = np.asarray(image, dtype=np.float32)
    else:
        return np.array(image.convert("RGB"), dtype=np.uint8)
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2).clip(0, 1))


def _alpha(image: Image.Image) -> np.ndarray | None:
    if image.mode in ("RGBA", "LA", "PA"):
        return np.array(image.getchannel("A"))
    if image.mode == "P" and "transparency" in image.info:
        return np.array(image.convert("RGBA").getchannel("A"))
    return None


def _rgb8(rgb: torch.Tensor) -> torch.Tensor:
    return (rgb.float().clamp(0, 1) * 255).round().to(torch.uint8)


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> (H, W, 3) uint8."""
    return _rgb8(rgb)[0].permute(1, 2, 0).numpy()


def to_pil(rgb: torch.Tensor) -> Image.Image:
    return Image.fromarray(to_uint8(rgb), "RGB")


def compose_rgba(result: torch.Tensor, source: Picture) -> np.ndarray:
    """The engine's result at the source's full size as (H, W, 4) uint8 RGBA rows, the source's alpha
    byte for byte (255 where it has none)."""
    rgb8 = _rgb8(result)
    opaque = torch.full_like(rgb8[:, :1], 255)
    # Scaled in 8 bits and with the alpha channel in place, so that the rows come out of the resize
    # ready to send: several times faster than in float for a layer of tens of megapixels.
    small = torch.cat([rgb8, opaque], dim=1).contiguous(memory_format=torch.channels_last)
    rgba = resize_8bit(small, source.size)[0].permute(1, 2, 0).numpy()
    rgba[:, :, 3] = 255 if source.alpha is None else source.alpha
    return rgba


def compose_result(result: torch.Tensor, source: Picture) -> Image.Image:
    """`compose_rgba` as an image: RGBA if the source has alpha, else RGB."""
    rgba = compose_rgba(result, source)
    return Image.fromarray(rgba, "RGBA") if source.alpha is not None else Image.fromarray(rgba[:, :, :3])


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)  # fast: these cross a network, not an archive
    return buffer.getvalue()


def save_image(image: Image.Image, path: str | Path) -> None:
    path = Path(path)
    if image.mode == "RGBA" and path.suffix.lower() in (".jpg", ".jpeg"):
        raise ImageError(f"{path}: JPEG cannot hold the alpha channel; write a .png instead")
    try:
        image.save(path)
    except (OSError, ValueError, KeyError) as error:
        raise ImageError(f"cannot write {path}: {error}") from error
