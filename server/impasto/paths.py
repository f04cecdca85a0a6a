"""Where Impasto keeps things on this machine, per the platform's conventions."""

from __future__ import annotations

from pathlib import Path

from platformdirs import user_data_dir

DEFAULT_STYLES_DIR = Path(user_data_dir("impasto")) / "styles"
