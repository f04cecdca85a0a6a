"""`impasto stylize` end to end, in-process and as a real command."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from helpers import interrupt_stylize
from impasto.cli import EXIT_CANCELLED, EXIT_FAILED, main
from PIL import Image


def run(*args: str) -> int:
    return main(["stylize", *args, "--quiet", "--size", "48", "--iterations", "4"])


def test_stylize_writes_the_content_size_and_changes_pixels(images: Path, tmp_path: Path):
    out = tmp_path / "out.png"
    content = images / "content" / "chelsea.png"
    assert run(str(content), "--style", str(images / "styles" / "starry-night.jpg"), "-o", str(out)) == 0
    result, source = np.asarray(Image.open(out)), np.asarray(Image.open(content).convert("RGB"))
    assert result.shape == source.shape
    assert np.abs(result.astype(int) - source).mean() > 5


def test_alpha_survives_the_cli(images: Path, tmp_path: Path):
    out = tmp_path / "out.png"
    content = images / "odd" / "rgba-640x480-transparent.png"
    assert run(str(content), "--style", str(images / "styles" / "udnie.jpg"), "-o", str(out)) == 0
    assert np.array_equal(
        np.array(Image.open(out).getchannel("A")), np.array(Image.open(content).getchannel("A"))
    )


def test_grayscale_16_bit_content(images: Path, tmp_path: Path):
    out = tmp_path / "out.png"
    content = images / "odd" / "gray16-300x200.png"
    assert run(str(content), "--style", str(images / "styles" / "the-scream.jpg"), "-o", str(out)) == 0
    assert Image.open(out).size == (300, 200)


def test_two_styles_with_weights(images: Path, tmp_path: Path):
    out = tmp_path / "out.png"
    styles = images / "styles"
    code = run(
        str(images / "content" / "coffee.png"),
        "--style",
        str(styles / "udnie.jpg"),
        "--style-weight",
        "0.7",
        "--style",
        str(styles / "water-lilies.jpg"),
        "--style-weight",
        "0.3",
        "-o",
        str(out),
    )
    assert code == 0 and out.is_file()


def test_unreadable_style_is_named_and_fails(tmp_path: Path, images: Path, capsys):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff garbage")
    out = tmp_path / "out.png"
    assert run(str(images / "content" / "camera.png"), "--style", str(broken), "-o", str(out)) == EXIT_FAILED
    assert "broken.jpg" in capsys.readouterr().err
    assert not out.exists()


def test_mismatched_style_weights_are_explained(images: Path, tmp_path: Path, capsys):
    code = run(
        str(images / "content" / "camera.png"),
        "--style",
        str(images / "styles" / "udnie.jpg"),
        "--style-weight",
        "1",
        "--style-weight",
        "2",
        "-o",
        str(tmp_path / "o.png"),
    )
    assert code == EXIT_FAILED and "one weight per style" in capsys.readouterr().err


def test_ctrl_c_stops_cleanly_and_writes_nothing(images: Path, tmp_path: Path):
    out = tmp_path / "out.png"
    content, style = images / "content" / "camera.png", images / "styles" / "udnie.jpg"
    code, stderr = interrupt_stylize(
        str(content), "--style", str(style), "-o", str(out), "--size", "64", "--iterations", "100000"
    )
    assert code == EXIT_CANCELLED and "cancelled" in stderr and not out.exists()
