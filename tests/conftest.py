from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import impasto  # noqa: F401 (before torch: its OpenMP setting must precede PyTorch's loading)
import numpy as np
import pytest
import torch
from impasto.engine import Engine, load_original_vgg19
from impasto.engine.learned_costs import FILE_NAME as LEARNED_COSTS
from impasto.engine.weights import WeightSet
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
TEST_DATA = REPO / "tests" / "data"  # small copies of public-domain photos and paintings: SOURCES.md


@pytest.fixture(scope="session")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with content/ (4 photos), styles/ (8 paintings) and odd/ (synthetic edge cases)."""
    folder = tmp_path_factory.mktemp("images")
    for part in ("content", "styles"):
        shutil.copytree(TEST_DATA / part, folder / part)
    write_odd_images(folder / "odd")
    return folder


def write_odd_images(folder: Path) -> None:
    """The edge-case inputs, made here (see tests/data/SOURCES.md): sizes, modes and properties count."""
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (1, 1), (200, 60, 30)).save(folder / "pixel-1x1.png")

    # 16-bit gray, 300×200: a gradient over the full range, inverted on a 20-px checkerboard, a band at
    # rows 90–109 alternating 0/65535 per column, and row 0 starting 0, 1, 65534, 65535 (which 8 bits lose).
    y, x = np.mgrid[0:200, 0:300]
    gray = np.round(x / 299 * 65535)
    checker = ((x // 20) + (y // 20)) % 2 == 1
    gray = np.where(checker, 65535 - gray, gray)
    gray[90:110] = np.where(x[90:110] % 2 == 1, 65535, 0)
    gray[0, :4] = [0, 1, 65534, 65535]
    Image.fromarray(gray.astype(np.uint16)).save(folder / "gray16-300x200.png")  # mode I;16, bit depth 16

    # RGBA 640×480: columns 0–159 transparent, 160–319 ramping 0→255, a transparent disc of radius 80 at
    # (480, 240); magenta under alpha 0, so that carelessly dropped alpha shows.
    y, x = np.mgrid[0:480, 0:640]
    rgba = np.zeros((480, 640, 4), np.uint8)
    rgba[..., 0] = x * 255 // 639
    rgba[..., 1] = y * 255 // 479
    rgba[..., 2] = 255 - x * 255 // 639
    alpha = np.full((480, 640), 255.0)
    alpha[:, :160] = 0
    alpha[:, 160:320] = (x[:, 160:320] - 160) / 159 * 255
    alpha[(x - 480) ** 2 + (y - 240) ** 2 <= 80**2] = 0
    rgba[..., 3] = np.round(alpha).astype(np.uint8)
    rgba[rgba[..., 3] == 0, :3] = (255, 0, 255)
    Image.fromarray(rgba, "RGBA").save(folder / "rgba-640x480-transparent.png")

    # RGB JPEG 4000×300 (quality 90, baseline): a sine, a vertical gradient and a 50-px checker.
    y, x = np.mgrid[0:300, 0:4000]
    wide = np.stack(
        [
            127.5 + 127.5 * np.sin(x / 40),
            y * 255 / 299,
            np.where(((x // 50) + (y // 50)) % 2 == 0, 230, 25),
        ],
        axis=-1,
    )
    Image.fromarray(wide.round().astype(np.uint8), "RGB").save(folder / "wide-4000x300.jpg", quality=90)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def original_weights(cache_dir: Path) -> WeightSet:
    return load_original_vgg19(cache_dir=cache_dir)


@pytest.fixture(scope="session")
def engine(original_weights: WeightSet) -> Engine:
    """The engine as users get it on this CPU (precision chosen automatically)."""
    return Engine(original_weights, torch.device("cpu"))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(cache_dir: Path) -> Iterator[None]:
    # Tests never write into the user's real cache: set before any fixture, so that the servers the
    # module- and session-wide fixtures start (thumbnails, learned costs) keep out of it too.
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMPASTO_CACHE_DIR", str(cache_dir))
        yield


@pytest.fixture(autouse=True)
def _first_guess_of_pace(cache_dir: Path) -> Iterator[None]:
    # The pace a server learned from one test's jobs is not the plan of a server started in another.
    learned_costs = cache_dir / LEARNED_COSTS
    learned_costs.unlink(missing_ok=True)
    yield
    learned_costs.unlink(missing_ok=True)
