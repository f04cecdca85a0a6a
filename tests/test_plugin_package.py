"""The plug-in as a Windows or macOS user gets it: a zip to unpack into GIMP's plug-ins folder.

The zip must hold no compiled file and carry everything its client needs: unpacked anywhere, it talks to
a server from an interpreter that sees nothing but the standard library and the zip's own folder, with
compiled imports forbidden (as in GIMP's MinGW Python on Windows).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import running_server
from test_client import FORBID_COMPILED

REPO = Path(__file__).resolve().parents[1]
PLUGIN = REPO / "plugin" / "impasto"
# The plug-in's own files (the entry GIMP runs and its package; and the dialog's help page), as they are in
# the zip's impasto/.
SOURCES = sorted(
    path.relative_to(PLUGIN).as_posix() for path in PLUGIN.rglob("*.py") if "vendor" not in path.parts
)
SHIPPED = sorted([*SOURCES, "help.html"])

CLIENT_FROM_ZIP = """
import json, sys
sys.path[:] = [p for p in sys.path if "-packages" not in p]  # nothing installed: the zip alone
vendor, address = sys.argv[1:3]
sys.path.insert(0, vendor)
from impasto.client import Client, impasto_answers
from impasto.launcher import ensure_local_server
with Client(address) as client:
    info = client.info()
    presets = client.styles()
started = ensure_local_server(address, None, impasto_answers)  # one answers there: nothing to start
print(json.dumps({"weights": info.weights, "presets": len(presets), "started": started,
                  "client": sys.modules["impasto.client"].__file__,
                  "launcher": sys.modules["impasto.launcher"].__file__}))
"""


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The zip that `install.sh --package-plugin` writes, with its build/ and dist/ in a temporary folder."""
    out = tmp_path_factory.mktemp("package")
    environment = {**os.environ, "IMPASTO_OUT": str(out)}
    subprocess.run(
        [str(REPO / "install.sh"), "--package-plugin"],
        check=True,
        capture_output=True,
        timeout=600,
        env=environment,
    )
    archives = sorted((out / "dist").glob("impasto-gimp-plugin-*.zip"))
    assert archives, "install.sh --package-plugin wrote no zip"
    return archives[-1]


@pytest.fixture(scope="module")
def unpacked(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    target = tmp_path_factory.mktemp("gimp-plug-ins")
    with zipfile.ZipFile(archive) as zipped:
        names = zipped.namelist()
        assert all(name.startswith("impasto/") for name in names)  # one folder, as GIMP wants
        zipped.extractall(target)
    return target / "impasto"


def test_the_zip_holds_the_plugin_and_no_compiled_file(archive: Path, unpacked: Path):
    shipped = sorted(
        path.relative_to(unpacked).as_posix()
        for path in unpacked.rglob("*")
        if path.is_file() and "vendor" not in path.relative_to(unpacked).parts
    )
    # The plug-in's files, unchanged, and nothing else beside vendor/: no test autopilot, no tests.
    assert shipped == SHIPPED and "impasto_gimp/hook.py" in shipped
    assert all((unpacked / name).read_text() == (PLUGIN / name).read_text() for name in SHIPPED)
    with zipfile.ZipFile(archive) as zipped:
        mode = zipped.getinfo("impasto/impasto.py").external_attr >> 16
    assert mode & 0o111, "impasto.py must stay executable: GIMP on Linux and macOS skips it otherwise"
    compiled = [p for p in unpacked.rglob("*") if p.suffix in (".so", ".pyd", ".dylib", ".dll")]
    assert compiled == []
    assert (unpacked / "vendor" / "grpclib").is_dir() and (
        unpacked / "vendor" / "google" / "protobuf"
    ).is_dir()


def test_the_unzipped_client_talks_to_a_server_with_nothing_else(unpacked: Path, images: Path):
    with running_server("--styles-dir", str(images / "styles")) as address:
        result = subprocess.run(
            [sys.executable, "-c", FORBID_COMPILED + CLIENT_FROM_ZIP, str(unpacked / "vendor"), address],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["weights"] == "vgg19-original" and out["presets"] >= 10 and out["started"] is None
    assert out["client"].startswith(str(unpacked)) and out["launcher"].startswith(str(unpacked))


@pytest.mark.parametrize("source", SOURCES)
def test_the_plugin_assumes_nothing_posix(source: str):
    """Paths through os.path, no signals, users, file modes or Unix-only modules: it runs on Windows."""
    tree = ast.parse((PLUGIN / source).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}  # fmt: skip
    imported |= {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not imported & {"signal", "fcntl", "pwd", "grp", "termios", "resource", "posix", "pty"}
    calls = {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    assert not calls & {"kill", "getuid", "geteuid", "chmod", "chown", "fork", "symlink", "setsid"}
    strings = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    ]
    assert not [s for s in strings if s.startswith(("/tmp", "/home", "/usr", "~/"))]
