"""Impasto's style-transfer engine: plain PyTorch, no gRPC, no files beyond weights."""

from .recipes import DEFAULT, RECIPES, SEED, Recipe
from .stylize import Cancelled, Engine, Options, Progress, Style, pick_device
from .weights import WeightsError, WeightSet, load_original_vgg19

__all__ = [
    "DEFAULT",
    "RECIPES",
    "SEED",
    "Cancelled",
    "Engine",
    "Options",
    "Progress",
    "Recipe",
    "Style",
    "WeightSet",
    "WeightsError",
    "load_original_vgg19",
    "pick_device",
]
