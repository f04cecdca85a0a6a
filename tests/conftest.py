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
