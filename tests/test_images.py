"""Reading what users throw at us: odd modes, 16 bits, alpha, EXIF, broken files."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from impasto.engine.imageops import fit_long_side, resize
from impasto.images import (
    ImageError,
    compose_result,
    compose_rgba,
    decode_picture,
    load_picture,
    picture_from_rgba8,
)
from PIL import Image


def test_rgba_alpha_is_kept_byte_for_byte(images: Path):
    path = images / "odd" / "rgba-640x480-transparent.png"
    source = load_picture(path)
    original_alpha = np.array(Image.open(path).getchannel("A"))
    result = compose_result(torch.rand(1, 3, 96, 128), source)  # a smaller working size, as usual
    assert result.mode == "RGBA" and result.size == (640, 480)
    assert np.array_equal(np.array(result.getchannel("A")), original_alpha)


def test_raw_rgba_upload_scaled_in_8_bits_matches_float_scaling(images: Path):
    photo = np.array(Image.open(images / "content" / "chelsea.png").convert("RGBA"))
    height, width = photo.shape[:2]
    upload = picture_from_rgba8(bytearray(photo.tobytes()), width, height, "layer")
    assert np.array_equal(upload.alpha, photo[:, :, 3])
    small = upload.rgb_fitting(120)
    assert small.shape[2:] == fit_long_side(height, width, 120)
    in_float = resize(upload.rgb, small.shape[2:])
    assert (small - in_float).abs().mean() < 1 / 255 and (small - in_float).abs().max() < 8 / 255
    assert upload.rgb_fitting(10_000) is upload.rgb  # never scaled up


def test_result_rows_are_full_size_with_the_source_alpha(images: Path):
    source = load_picture(images / "odd" / "rgba-640x480-transparent.png")
    gray = torch.full((1, 3, 48, 64), 0.5)
    rows = compose_rgba(gray, source)
    assert rows.shape == (480, 640, 4) and rows.flags["C_CONTIGUOUS"]
    assert np.array_equal(rows[:, :, 3], source.alpha)
    assert np.all(rows[:, :, :3] == 128)
    opaque = compose_rgba(gray, load_picture(images / "content" / "chelsea.png"))
    assert np.all(opaque[:, :, 3] == 255)


def test_16_bit_grayscale_is_scaled_from_65535(images: Path):
    path = images / "odd" / "gray16-300x200.png"
    raw = np.asarray(Image.open(path), dtype=np.float64)
    picture = load_picture(path)
    assert picture.size == (200, 300) and picture.alpha is None
    assert torch.allclose(picture.rgb[0, 0].double(), torch.from_numpy(raw / 65535), atol=1e-6)
    assert torch.equal(picture.rgb[0, 0], picture.rgb[0, 2])  # gray: equal channels


def test_exif_orientation_is_applied(tmp_path: Path):
    image = Image.new("RGB", (40, 20), "white")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", exif=exif)
    assert decode_picture(buffer.getvalue(), "rotated.jpg").size == (40, 20)  # (height, width)


def test_palette_transparency_becomes_alpha():
    image = Image.new("P", (4, 4), 0)
    image.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
    image.putpixel((1, 1), 1)
    buffer = io.BytesIO()
    image.save(buffer, "PNG", transparency=0)
    picture = decode_picture(buffer.getvalue(), "palette.png")
    assert picture.alpha is not None and picture.alpha[1, 1] == 255 and picture.alpha[0, 0] == 0


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"this is not an image", "not a readable image"),
        (b"\x89PNG\r\n\x1a\n" + b"\x00" * 20, "not a readable image"),
    ],
    ids=["empty", "garbage", "broken-png"],
)
def test_unreadable_bytes_name_the_file(data: bytes, message: str):
    with pytest.raises(
        ImageError, match=rf"upload\.png.*{message}|{message}.*upload\.png|upload\.png is {message}"
    ):
        decode_picture(data, "upload.png")


def test_truncated_file_is_refused(images: Path):
    data = (images / "content" / "chelsea.png").read_bytes()
    with pytest.raises(ImageError, match="chelsea-cut.png"):
        decode_picture(data[: len(data) // 2], "chelsea-cut.png")


def png_header(width: int, height: int) -> bytes:
    """A valid PNG header that claims width×height pixels, with no pixel data behind it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    data = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    return data + struct.pack(">I", 0) + b"IDAT" + struct.pack(">I", zlib.crc32(b"IDAT"))


def test_header_claiming_huge_size_is_refused_before_decoding():
    with pytest.raises(ImageError, match="bomb.png is .*over the limit"):
        decode_picture(png_header(100_000, 100_000), "bomb.png")
    with pytest.raises(ImageError, match="8000×8000 = 64,000,000 pixels, over the limit of 50,000,000"):
        decode_picture(png_header(8_000, 8_000), "big.png", max_pixels=50_000_000)  # PIL would accept it


def test_pictures_up_to_the_servers_limit_get_past_pillows_own_warning():
    # 90 Mpx: over the 89.5 Mpx where Pillow warns of a decompression bomb, under the server's 100 Mpx.
    # Before, that warning refused it; an RGBA upload of the same size was accepted.
    sizes = []

    def stop(width: int, height: int) -> None:
        sizes.append((width, height))
        raise InterruptedError("the size was accepted; its pixels are not decoded here")

    with pytest.raises(InterruptedError):
        decode_picture(png_header(10_000, 9_000), "big.png", max_pixels=100_000_000, before_decode=stop)
    assert sizes == [(10_000, 9_000)]


def test_only_the_supported_formats_are_decoded():
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n0 0 moveto 10 10 lineto stroke\n%%EOF\n"
    with pytest.raises(
        ImageError, match=r"drawing\.eps .*not a supported image \(PNG, JPEG, WebP, TIFF, BMP or GIF\)"
    ):
        decode_picture(eps, "drawing.eps")
    pdf = b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n"
    with pytest.raises(ImageError, match="not a supported image"):
        decode_picture(pdf, "document.pdf")


@pytest.mark.parametrize("fmt", ["BMP", "GIF", "WEBP", "TIFF"])
def test_bmp_gif_webp_and_tiff_are_decoded(fmt: str):
    buffer = io.BytesIO()
    Image.new("RGB", (12, 8), (200, 60, 30)).save(buffer, fmt)
    assert decode_picture(buffer.getvalue(), f"picture.{fmt.lower()}").size == (8, 12)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_pixels_must_be_finite(tmp_path: Path, bad: float):
    values = np.full((6, 8), 0.5, dtype=np.float32)
    values[2, 3] = bad
    path = tmp_path / "float.tif"
    Image.fromarray(values, "F").save(path, "TIFF")
    with pytest.raises(ImageError, match=r"float\.tif.*not finite"):
        load_picture(path)
    values[2, 3] = 0.25
    Image.fromarray(values, "F").save(path, "TIFF")
    assert load_picture(path).size == (6, 8)


def test_missing_file_is_named(tmp_path: Path):
    with pytest.raises(ImageError, match="nowhere.png"):
        load_picture(tmp_path / "nowhere.png")
