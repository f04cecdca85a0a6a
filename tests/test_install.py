"""install.sh records, beside the plug-in it installs, the server that the plug-in starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SERVER = Path(sys.executable).with_name("impasto-server")  # this checkout's, where install.sh put it


def install(*args: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(REPO / "install.sh"), *args], capture_output=True, text=True, timeout=600, check=False, env=env
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def test_plugin_only_records_this_checkouts_server_and_says_gimp_starts_it(tmp_path: Path):
    gimp_dir = tmp_path / "GIMP" / "3.2"
    out = install("--plugin-only", "--gimp-dir", str(gimp_dir))
    assert (gimp_dir / "plug-ins" / "impasto" / "impasto.py").exists()
    record = json.loads((gimp_dir / "impasto-server.json").read_text())
    assert record == {"command": [str(SERVER)], "recorded_by": "install.sh"}
    closing = out[out.index("Installed:") :]
    assert f"the plug-in, into {gimp_dir}" in closing
    assert f"starts the server ({SERVER}) itself" in closing
    assert "Installed: the server" not in closing  # this mode installed no server


def test_a_record_the_user_wrote_is_kept(tmp_path: Path):
    gimp_dir = tmp_path / "GIMP" / "3.0"
    gimp_dir.mkdir(parents=True)
    own = '{"command": ["/opt/impasto/bin/impasto-server", "--device", "cuda:1"]}\n'
    (gimp_dir / "impasto-server.json").write_text(own)
    out = install("--plugin-only", "--gimp-dir", str(gimp_dir))
    assert (gimp_dir / "impasto-server.json").read_text() == own
    assert "it names a server of your own" in out


def test_installing_into_gimps_flatpak_allows_it_to_start_the_server(tmp_path: Path):
    """Flathub's GIMP starts the server outside its sandbox (flatpak-spawn --host), which Flatpak allows
    only with a permission that install.sh gives it, once, however many of its folders get the plug-in."""
    flatpaks = tmp_path / ".var" / "app" / "org.gimp.GIMP" / "config" / "GIMP"
    flatpak_dirs = [flatpaks / "3.0", flatpaks / "3.2"]
    own_gimp = tmp_path / ".config" / "GIMP" / "3.2"
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    flatpak = bin_dir / "flatpak"  # a stand-in that notes how it was called
    flatpak.write_text(f'#!/bin/sh\necho "$@" >> "{tmp_path}/flatpak-calls"\n')
    flatpak.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}
    folders = [arg for d in (*flatpak_dirs, own_gimp) for arg in ("--gimp-dir", str(d))]
    out = install("--plugin-only", *folders, env=env)
    assert (tmp_path / "flatpak-calls").read_text() == (
        "override --user --talk-name=org.freedesktop.Flatpak org.gimp.GIMP\n"
    )
    assert "Allowed GIMP's Flatpak to start the Impasto server outside its sandbox" in out
    for gimp_dir in (*flatpak_dirs, own_gimp):
        assert json.loads((gimp_dir / "impasto-server.json").read_text())["command"] == [str(SERVER)]
