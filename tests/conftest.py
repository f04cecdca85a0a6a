from __future__ import annotations

from pathlib import Path

import pytest
import torch
from impasto.engine import Engine, load_original_vgg19
from impasto.engine.weights import WeightSet

REPO = Path(__file__).resolve().parent.parent
SHARED_IMAGES = REPO.parent / "shared" / "images"


@pytest.fixture(scope="session")
def images() -> Path:
    if not SHARED_IMAGES.is_dir():
        pytest.fail(f"test images not found at {SHARED_IMAGES}; the repo must sit beside shared/")
    return SHARED_IMAGES


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


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch: pytest.MonkeyPatch, cache_dir: Path) -> None:
    # Tests never write into the user's real cache.
    monkeypatch.setenv("IMPASTO_CACHE_DIR", str(cache_dir))


def gradient_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth, colourful test image with some texture, (1, 3, H, W) in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height).view(1, 1, height, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, 1, width)
    base = torch.cat(
        [
            ys.expand(1, 1, height, width),
            xs.expand(1, 1, height, width),
            (1 - ys * xs).expand(1, 1, height, width),
        ],
        dim=1,
    )
    return (0.8 * base + 0.2 * torch.rand(1, 3, height, width, generator=generator)).clamp(0, 1)
