"""Impasto's style-transfer engine: plain PyTorch, no gRPC, no files beyond weights."""

from .device import DeviceInfo, default_iterations, default_size, describe, pick_device
from .plan import DoesNotFit, Plan
from .recipes import DEFAULT, RECIPES, SEED, Recipe
from .run import Cancelled, Progress
from .stylize import Engine, Options, Style
from .weights import WeightsError, WeightSet, load_original_vgg19

__all__ = [
    "DEFAULT",
    "RECIPES",
    "SEED",
    "Cancelled",
    "DeviceInfo",
    "DoesNotFit",
    "Engine",
    "Options",
    "Plan",
    "Progress",
    "Recipe",
    "Style",
    "WeightSet",
    "WeightsError",
    "default_iterations",
    "default_size",
    "describe",
    "load_original_vgg19",
    "pick_device",
]
