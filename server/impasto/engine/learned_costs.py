"""Each engine's cost model as its measurement at start and its last job left it, kept on disk between
servers.

The first guess for a kind of device was fitted on one machine (estimate.FIRST_GUESS_COSTS); a user's
machine runs at its own pace, measured by a small job where nothing is kept (`Engine.measure_pace`) and
then by each job, and the plug-in's own server ends itself after a while unused. Without this file each
new server would measure again and forget what the jobs taught.

One JSON object, `{key: [seconds_per_pass, seconds_per_pixel_iteration]}`, in the cache folder: losing it
costs a small job timed at the next start. A key names what sets the pace (device, model, precision,
threads, PyTorch), so a model learned on one never plans for another.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import torch

from ..files import write_cache_file
from .device import describe
from .estimate import CostModel

FILE_NAME = "costs.json"  # in the cache folder


def pace_key(device: torch.device, precision: str) -> str:
    """What the pace of a job depends on besides the job itself, as one string."""
    threads = f" × {torch.get_num_threads()} threads" if device.type == "cpu" else ""
    return f"{device.type}: {describe(device).name}{threads}, {precision}, torch {torch.__version__}"


class LearnedCosts:
    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()

    def get(self, key: str) -> CostModel | None:
        """The model last kept for `key`; None where there is none or the file is not one of ours."""
        value = self._read().get(key)
        if not (isinstance(value, list) and len(value) == 2):
            return None
        if not all(isinstance(x, float | int) and math.isfinite(x) for x in value):
            return None
        per_pass, per_pixel = value
        return CostModel(per_pass, per_pixel) if per_pass >= 0 and per_pixel > 0 else None

    def put(self, key: str, model: CostModel) -> None:
        with self._lock:  # engines on several devices of one server share the file
            models = self._read()
            models[key] = [model.seconds_per_pass, model.seconds_per_pixel_iteration]
            write_cache_file(self.path, json.dumps(models, indent=1, sort_keys=True).encode())

    def _read(self) -> dict[str, object]:
        try:
            models = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return {}
        return models if isinstance(models, dict) else {}
