"""One scale's loss and gradient computed tile by tile, with the style statistics of the whole image.

The method (one L-BFGS closure = pass 1 + pass 2):

- The image is cut into tiles whose interiors partition it. Each tile is run through VGG with a halo
  of `halo` pixels on every side that has image beyond it (clamped at the image's own borders, where
  the network zero-pads exactly as it does for the whole image). Tile corners sit on multiples of the
  deepest pooling stride, so every pooling grid agrees with the whole image's, and a tile's interior
  maps to a whole number of feature positions at every layer: rows [iy0, iy1) of the image are rows
  [(iy0 - y0)/s, (iy1 - y0)/s) of a stride-s layer in a tile whose input starts at row y0.
- Pass 1, no gradients: every tile's interior features are accumulated into the whole image's Gram
  matrices, G = Σ_tiles F_int·F_intᵀ / (C·H_s·W_s) with H_s·W_s the whole image's feature positions, and
  the content and TV losses into sums normalised by the whole image's element counts. This is the loss.
- Pass 2, tile by tile with gradients: D = ∂L/∂G = w·2(G − T)/C² is a constant from pass 1; the tile's
  tapped layers get, on their interior only, the gradient of the surrogate ⟨D, F_int·F_intᵀ⟩/(C·H_s·W_s)
  (that is 2·D·F_int/(C·H_s·W_s)) plus the content term 2w(F_int − P)/(C·H_s·W_s), and VGG's backward
  pass carries it to the tile's input pixels. The gradient of every input pixel of the tile, halo
  included, is *added* into a full-size buffer: a pixel near a border influences interior features of
  two or more tiles, and each tile contributes its own share. (Keeping only the interior pixels'
  gradient would drop those shares and leave a seam.) TV's gradient is added the same way from the
  pixel pairs the tile owns (the pairs that start in its interior).

The error: with `halo` ≥ the receptive-field radius of the deepest tapped layer (`receptive_halo`,
80 px through conv5_1), every interior feature sees exactly the pixels it sees in the whole image, so
the loss and gradient equal the whole image's up to floating-point summation order; nothing is
approximated. A smaller halo (`Options.tile_halo`) truncates the receptive field of the features within
(radius − halo) px of an interior border: they see zero padding where the image has pixels.
Measured by tests/test_tiling.py on a 256×192 photo in 2×2 tiles of 128 px: at the full halo (96 px)
the gradient's relative L2 error is 7e-7 with fp32 convolutions and the losses agree to 1e-7 (with bf16
convolutions 2.7e-3 and 1e-7: bf16 rounds differently on a tile's shape); at a 64 px halo 3e-3, at
48 px 8 %, at 32 px 21 % (style loss off by 0.005 %, 1.6 %, 0.3–4.7 %).

Memory: one tile's working set (its input pixels × the whole-image cost per pixel) plus full-size
buffers that grow with the image but are small per pixel: the image, the gradient buffer, the
optimiser's history and the content features at the content layers (`estimate.state_bytes_per_pixel`).
The content features can be kept on another device than the network's (`state_device`: host memory
next to a GPU); each tile then brings its crop of them over.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from .losses import LossParts, Targets


@dataclass(frozen=True)
class Tile:
    """A tile: its interior [iy0, iy1) × [ix0, ix1) and its input with the halo, [y0, y1) × [x0, x1)."""

    iy0: int
    iy1: int
    ix0: int
    ix1: int
    y0: int
    y1: int
    x0: int
    x1: int

    @property
    def input_pixels(self) -> int:
        return (self.y1 - self.y0) * (self.x1 - self.x0)


def layer_geometry(names: list[str]) -> tuple[dict[str, int], int]:
    """Each layer's stride, and the receptive-field radius (px, the larger side) of the deepest one.

    A 3×3 convolution with padding 1 widens the field by one input step on each side; a 2×2 pooling
    widens it by one step on the far side and doubles the step.
    """
    strides, step, before, after = {}, 1, 0, 0
    for name in names:
        if name.startswith("conv"):
            before, after = before + step, after + step
        elif name.startswith("pool"):
            after += step
            step *= 2
        strides[name] = step
    return strides, max(before, after)


def alignment(names: list[str]) -> int:
    """The deepest pooling stride in use: tile corners on its multiples keep pooling grids aligned."""
    return max(layer_geometry(names)[0].values())


def receptive_halo(names: list[str]) -> int:
    """The halo (px) that makes tiled features exact: the receptive-field radius, rounded up to the
    alignment."""
    align = alignment(names)
    return math.ceil(layer_geometry(names)[1] / align) * align


def _spans(length: int, tile: int, halo: int, align: int) -> list[tuple[int, int, int, int]]:
    """Along one side: each tile's interior [i0, i1) and input [o0, o1), for tiles of interior `tile`
    px (rounded up to `align`) and a halo of `halo` px (rounded up likewise), clamped to the side."""
    tile = max(align, math.ceil(tile / align) * align)
    halo = max(align, math.ceil(halo / align) * align)  # ≥ 1 px: TV pairs reach one pixel over
    return [
        (i0, min(length, i0 + tile), max(0, i0 - halo), min(length, i0 + tile + halo))
        for i0 in range(0, length, tile)
    ]


def tile_grid(height: int, width: int, tile: int, halo: int, align: int) -> list[Tile]:
    """Tiles of interior `tile` px (rounded up to `align`), row-major, with inputs clamped to the image."""
    return [
        Tile(iy0, iy1, ix0, ix1, y0, y1, x0, x1)
        for iy0, iy1, y0, y1 in _spans(height, tile, halo, align)
        for ix0, ix1, x0, x1 in _spans(width, tile, halo, align)
    ]


def tile_inputs(height: int, width: int, tile: int, halo: int, align: int) -> tuple[int, int, int]:
    """The grid of `tile_grid` in numbers, without making it: (tiles, the largest tile's input pixels,
    all tiles' input pixels). A tile's input is its row's extent times its column's."""
    rows = [o1 - o0 for _, _, o0, o1 in _spans(height, tile, halo, align)]
    cols = [o1 - o0 for _, _, o0, o1 in _spans(width, tile, halo, align)]
    return len(rows) * len(cols), max(rows) * max(cols), sum(rows) * sum(cols)


def feature_size(size: int, stride: int) -> int:
    """Positions of a stride-`stride` layer along a side of `size` px (ceil-mode pooling)."""
    return math.ceil(size / stride)


def _crop(features: torch.Tensor, tile: Tile, stride: int, height: int, width: int) -> tuple[slice, slice]:
    """The rows and columns of a tile's feature map that belong to its interior."""

    def side(i0: int, i1: int, o: int, full: int, have: int) -> slice:
        end = have if i1 == full else (i1 - o) // stride
        return slice((i0 - o) // stride, end)

    return (
        side(tile.iy0, tile.iy1, tile.y0, height, features.shape[2]),
        side(tile.ix0, tile.ix1, tile.x0, width, features.shape[3]),
    )


def _pixels(features: torch.Tensor) -> torch.Tensor:
    """(H·W, C) rows of positions."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


class TiledScale:
    """The tiled loss and gradient of one scale; `features(image)` is the network (RGB in → taps out)."""

    def __init__(
        self,
        features: Callable[[torch.Tensor], dict[str, torch.Tensor]],
        names: list[str],
        size: tuple[int, int],
        tile: int,
        halo: int | None = None,
        matmuls: Callable[[], contextlib.AbstractContextManager] | None = None,
        state_device: torch.device | None = None,
    ):
        self.features = features
        self.state_device = state_device
        self.height, self.width = size
        self.strides, _ = layer_geometry(names)
        self.align = alignment(names)
        self.halo = receptive_halo(names) if halo is None else halo
        self.tiles = tile_grid(self.height, self.width, tile, self.halo, self.align)
        self.matmuls = matmuls

    def positions(self, layer: str) -> int:
        s = self.strides[layer]
        return feature_size(self.height, s) * feature_size(self.width, s)

    def _input(self, image: torch.Tensor, tile: Tile) -> torch.Tensor:
        return image[:, :, tile.y0 : tile.y1, tile.x0 : tile.x1]

    def interiors(
        self, image: torch.Tensor, layers: list[str]
    ) -> Iterator[tuple[Tile, dict[str, torch.Tensor]]]:
        """Each tile's interior features at `layers`, without gradients."""
        with torch.no_grad():
            for tile in self.tiles:
                taps = self.features(self._input(image, tile))
                yield (
                    tile,
                    {
                        k: taps[k][(..., *_crop(taps[k], tile, self.strides[k], self.height, self.width))]
                        for k in layers
                    },
                )

    def grams(self, image: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
        """The whole image's Gram matrices (as `losses.gram`), accumulated tile by tile."""
        sums: dict[str, torch.Tensor] = {}
        for _, taps in self.interiors(image, layers):
            for k, f in taps.items():
                flat = _pixels(f).float()
                sums[k] = sums[k] + flat.T @ flat if k in sums else flat.T @ flat
        return {k: g / (g.shape[0] * self.positions(k)) for k, g in sums.items()}

    def feature_maps(self, image: torch.Tensor, layers: list[str]) -> dict[str, torch.Tensor]:
        """The whole image's features at `layers` (float32), stitched from tile interiors."""
        out: dict[str, torch.Tensor] = {}
        for tile, taps in self.interiors(image, layers):
            for k, f in taps.items():
                s = self.strides[k]
                if k not in out:
                    h, w = feature_size(self.height, s), feature_size(self.width, s)
                    device = self.state_device or f.device
                    pinned = device.type == "cpu" and f.device.type == "cuda"
                    out[k] = torch.empty(1, f.shape[1], h, w, device=device, pin_memory=pinned)
                y, x = tile.iy0 // s, tile.ix0 // s
                out[k][:, :, y : y + f.shape[2], x : x + f.shape[3]] = f.float()
        return out

    def loss_and_gradient(
        self,
        image: torch.Tensor,
        targets: Targets,
        on_tile: Callable[[int, int, LossParts], None] | None = None,
        check: Callable[[], None] | None = None,
    ) -> tuple[LossParts, torch.Tensor]:
        """The whole image's loss parts (pass 1) and ∂loss/∂image (pass 2), as `total_loss` gives them."""
        image = image.detach()
        style_layers = list(targets.style_weights)
        content_layers = list(targets.content_weights)
        layers = sorted(set(style_layers) | set(content_layers))
        zero = torch.zeros((), device=image.device)

        # Pass 1: Gram matrices and the content sum over the whole image.
        sums: dict[str, torch.Tensor] = {}
        content = zero
        with self._matmuls():
            for tile, taps in self.interiors(image, layers):
                if check is not None:
                    check()
                for k in style_layers:
                    flat = _pixels(taps[k]).float()
                    sums[k] = sums[k] + flat.T @ flat if k in sums else flat.T @ flat
                for k in content_layers:
                    f = taps[k]
                    target = self._target_crop(targets.content[k], tile, k, f)
                    error = torch.square(f.float() - target).sum()
                    content = content + targets.content_weights[k] * error / (f.shape[1] * self.positions(k))
        style = zero
        slopes = {}
        for k in style_layers:
            channels = sums[k].shape[0]
            error = sums[k] / (channels * self.positions(k)) - targets.style_grams[k]
            weight = targets.style_weights[k]
            style = style + weight * torch.square(error).mean()
            # ∂L/∂F_int = (D + Dᵀ)·F_int / (C·H_s·W_s), D = 2w(G − T)/C², symmetric.
            slopes[k] = (error + error.T) * (2 * weight / (channels**3 * self.positions(k)))
        tv = targets.tv_weight * self._tv_value(image)
        parts = LossParts(content, style, tv)

        # Pass 2: each tile's share of the gradient, added into a full-size buffer.
        gradient = torch.zeros_like(image)
        for index, tile in enumerate(self.tiles):
            if check is not None:
                check()
            x = self._input(image, tile).clone().requires_grad_(True)
            with torch.enable_grad(), self._matmuls():
                taps = self.features(x)
                outputs, grads = [], []
                for k in layers:
                    f = taps[k]
                    rows, cols = _crop(f, tile, self.strides[k], self.height, self.width)
                    interior = f[:, :, rows, cols]
                    g = torch.zeros((), device=image.device)
                    if k in slopes:
                        g = _pixels(interior) @ slopes[k].to(f.dtype)
                        g = g.reshape(1, interior.shape[2], interior.shape[3], -1).permute(0, 3, 1, 2).float()
                    if k in targets.content_weights:
                        target = self._target_crop(targets.content[k], tile, k, interior)
                        scale = 2 * targets.content_weights[k] / (f.shape[1] * self.positions(k))
                        g = g + (interior.float() - target) * scale
                    full = torch.zeros_like(f)
                    full[:, :, rows, cols] = g.to(f.dtype)
                    outputs.append(f)
                    grads.append(full)
                outputs.append(targets.tv_weight * self._tv_surrogate(x, tile))
                grads.append(torch.ones((), device=image.device))
                torch.autograd.backward(outputs, grads)
            gradient[:, :, tile.y0 : tile.y1, tile.x0 : tile.x1] += x.grad
            del taps, outputs, grads, x
            if on_tile is not None:
                on_tile(index + 1, len(self.tiles), parts)
        return parts, gradient

    def _matmuls(self) -> contextlib.AbstractContextManager:
        return self.matmuls() if self.matmuls is not None else contextlib.nullcontext()

    def _target_crop(self, target: torch.Tensor, tile: Tile, layer: str, like: torch.Tensor) -> torch.Tensor:
        s = self.strides[layer]
        y, x = tile.iy0 // s, tile.ix0 // s
        crop = target[:, :, y : y + like.shape[2], x : x + like.shape[3]]
        if crop.device != like.device and crop.is_pinned():
            # A crop is not contiguous: PyTorch would gather it into pageable memory and copy that while the
            # host waits. Gathered into pinned memory, the copy is only queued, and PyTorch's pinned-memory
            # cache keeps the block from reuse until the copy has run.
            crop = torch.empty(crop.shape, dtype=crop.dtype, pin_memory=True).copy_(crop)
        return crop.to(like.device, non_blocking=crop.is_pinned()).float()

    def _tv_counts(self) -> tuple[int, int]:
        return 3 * (self.height - 1) * self.width, 3 * self.height * (self.width - 1)

    def _tv_value(self, image: torch.Tensor) -> torch.Tensor:
        # Tile by tile: no image-sized difference tensors.
        vertical_n, horizontal_n = self._tv_counts()
        vertical = horizontal = torch.zeros((), device=image.device)
        for tile in self.tiles:
            v, h = self._tv_pairs(image, tile, 0, 0)
            vertical, horizontal = vertical + v, horizontal + h
        return 0.5 * (vertical / max(vertical_n, 1) + horizontal / max(horizontal_n, 1))

    def _tv_pairs(self, x: torch.Tensor, tile: Tile, oy: int, ox: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sums of |differences| of the pixel pairs that start in the tile's interior; `x` holds the
        image from (oy, ox) on (the whole image: 0, 0; a tile's input: its corner)."""
        r0, r1, c0, c1 = tile.iy0 - oy, tile.iy1 - oy, tile.ix0 - ox, tile.ix1 - ox
        rv1 = min(tile.iy1, self.height - 1) - oy
        ch1 = min(tile.ix1, self.width - 1) - ox
        x = x.float()
        vertical = torch.abs(x[:, :, r0 + 1 : rv1 + 1, c0:c1] - x[:, :, r0:rv1, c0:c1]).sum()
        horizontal = torch.abs(x[:, :, r0:r1, c0 + 1 : ch1 + 1] - x[:, :, r0:r1, c0:ch1]).sum()
        return vertical, horizontal

    def _tv_surrogate(self, x: torch.Tensor, tile: Tile) -> torch.Tensor:
        vertical_n, horizontal_n = self._tv_counts()
        vertical, horizontal = self._tv_pairs(x, tile, tile.y0, tile.x0)
        return 0.5 * (vertical / max(vertical_n, 1) + horizontal / max(horizontal_n, 1))
