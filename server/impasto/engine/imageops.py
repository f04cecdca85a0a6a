"""Pixel operations on RGB tensors in [0, 1], shape (1, 3, H, W): colour, resizing."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# BT.601 RGB -> YUV; luminance-only transfer swaps U and V back to the content's.
_RGB_TO_YUV = torch.tensor([[0.299, 0.587, 0.114], [-0.14713, -0.28886, 0.436], [0.615, -0.51499, -0.10001]])


def rgb_to_yuv(rgb: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", _RGB_TO_YUV.to(rgb), rgb)


def yuv_to_rgb(yuv: torch.Tensor) -> torch.Tensor:
    return torch.einsum("ij,bjhw->bihw", torch.linalg.inv(_RGB_TO_YUV).to(yuv), yuv)


def keep_content_colours(stylised: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    """The stylised image's luminance with the content's chrominance (Gatys et al. 2016, §2)."""
    if content.shape[-2:] != stylised.shape[-2:]:
        content = resize(content, stylised.shape[-2:])
    yuv = rgb_to_yuv(content)
    yuv[:, :1] = rgb_to_yuv(stylised)[:, :1]
    return yuv_to_rgb(yuv).clamp(0, 1)


def resize(image: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """Bicubic with antialiasing, so a downscaled style image keeps its texture statistics."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image, size=tuple(size), mode="bicubic", align_corners=False, antialias=True).clamp(
        0, 1
    )


def resize_8bit(image: torch.Tensor, size: tuple[int, int] | torch.Size) -> torch.Tensor:
    """`resize` for uint8 images: PyTorch's vectorised 8-bit path, which wants channels last."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    image = image.contiguous(memory_format=torch.channels_last)
    return F.interpolate(image, size=tuple(size), mode="bicubic", align_corners=False, antialias=True)


def fit_long_side(height: int, width: int, long_side: int) -> tuple[int, int]:
    scale = long_side / max(height, width)
    return max(1, round(height * scale)), max(1, round(width * scale))
