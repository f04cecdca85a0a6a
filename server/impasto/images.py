"""Image files and bytes <-> the engine's tensors, with alpha kept aside untouched.

Conversions: EXIF orientation is applied; grayscale becomes RGB with equal channels; 16-bit
images (PIL modes I;16 and I) are scaled from 0–65535 to [0, 1] before the engine sees them and
results are written with 8 bits per channel; palette images are expanded to RGB(A).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

DEFAULT_MAX_PIXELS = 100_000_000


class ImageError(ValueError):
    """An image cannot be used; the message names it and says why."""


class TooLarge(ImageError):
    """An image has more pixels than the limit allows."""


@dataclass
class Picture:
    rgb: torch.Tensor  # (1, 3, H, W) float32 in [0, 1]
    alpha: np.ndarray | None  # (H, W) uint8 exactly as in the source, or None
    name: str

    @property
    def size(self) -> tuple[int, int]:
        """(height, width)"""
        return self.rgb.shape[2], self.rgb.shape[3]


def load_picture(path: str | Path, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageError(f"cannot read image {path}: {error.strerror or error}") from error
    return decode_picture(data, str(path), max_pixels)


def decode_picture(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> Picture:
    if not data:
        raise ImageError(f"{name} is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise TooLarge(
                    f"{name} is {width}×{height} = {width * height:,} pixels, "
                    f"over the limit of {max_pixels:,}; scale it down first"
                )
            image.load()
            image = ImageOps.exif_transpose(image)
    except ImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise TooLarge(f"{name} is over the limit of pixels that can be decoded safely ({error})") from error
    except UnidentifiedImageError as error:
        raise ImageError(
            f"{name} is not a readable image (not PNG, JPEG, WebP, TIFF or another known format)"
        ) from error
    except Exception as error:
        raise ImageError(f"{name} is not a readable image ({error})") from error
    if image.width == 0 or image.height == 0:
        raise ImageError(f"{name} has no pixels ({image.width}×{image.height})")
    return Picture(_rgb_tensor(image), _alpha(image), name)


def picture_from_rgba8(data: bytes, width: int, height: int, name: str) -> Picture:
    """Raw 8-bit RGBA rows, as GIMP hands them to a plug-in."""
    if width <= 0 or height <= 0:
        raise ImageError(f"{name} has no pixels ({width}×{height})")
    if len(data) != width * height * 4:
        raise ImageError(
            f"{name}: {width}×{height} RGBA needs {width * height * 4:,} bytes, got {len(data):,}"
        )
    pixels = np.frombuffer(data, dtype=np.uint8).reshape(height, width, 4)
    rgb = torch.from_numpy(pixels[:, :, :3].astype(np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
    return Picture(rgb, pixels[:, :, 3].copy(), name)


def _rgb_tensor(image: Image.Image) -> torch.Tensor:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        gray = np.asarray(image, dtype=np.float32) / 65535.0
        rgb = np.repeat(gray[:, :, None], 3, axis=2).clip(0, 1)
    elif image.mode == "F":
        gray = np.asarray(image, dtype=np.float32)
        rgb = np.repeat(gray[:, :, None], 3, axis=2).clip(0, 1)
    else:
        rgb = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1).unsqueeze(0)


def _alpha(image: Image.Image) -> np.ndarray | None:
    if image.mode in ("RGBA", "LA", "PA"):
        return np.array(image.getchannel("A"))
    if image.mode == "P" and "transparency" in image.info:
        return np.array(image.convert("RGBA").getchannel("A"))
    return None


def to_uint8(rgb: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> (H, W, 3) uint8."""
    return (rgb[0].clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def to_pil(rgb: torch.Tensor) -> Image.Image:
    return Image.fromarray(to_uint8(rgb), "RGB")


def compose_result(result: torch.Tensor, source: Picture) -> Image.Image:
    """The engine's result at the source's full size, with the source's alpha byte for byte."""
    height, width = source.size
    image = to_pil(result.float())
    if image.size != (width, height):
        # In 8 bits with PIL: the same picture to a level, and several times faster than a float
        # resize for a layer of tens of megapixels.
        image = image.resize((width, height), Image.Resampling.BICUBIC)
    if source.alpha is not None:
        image.putalpha(Image.fromarray(source.alpha, "L"))
    return image


def rgba8_bytes(image: Image.Image) -> bytes:
    return image.convert("RGBA").tobytes()


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
