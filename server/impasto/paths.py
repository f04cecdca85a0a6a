"""Where Impasto keeps things on this machine, per the platform's conventions."""

from __future__ import annotations

from pathlib import Path

from platformdirs import user_data_dir, user_state_dir

DEFAULT_STYLES_DIR = Path(user_data_dir("impasto")) / "styles"
# The server's own secrets for `impasto-server --remote`: its token, TLS key and certificate.
DEFAULT_STATE_DIR = Path(user_state_dir("impasto"))
