"""A real GIMP 3.0 in a Debian trixie root, with the plug-in installed by install.sh.

The root is built once with debootstrap (as root; a few minutes) and cached at
$IMPASTO_GIMP_ROOT (default /var/cache/impasto/gimp-trixie). GIMP runs in it with chroot and
shares this machine's network, so the plug-in reaches an impasto-server on loopback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOT = Path(os.environ.get("IMPASTO_GIMP_ROOT", "/var/cache/impasto/gimp-trixie"))
MIRROR = os.environ.get("IMPASTO_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ["gimp", "python3-gi", "gir1.2-gimp-3.0", "gir1.2-gegl-0.4", "gir1.2-babl-0.1",
            "xvfb", "xauth", "x11-apps", "x11-utils", "netpbm", "procps"]  # fmt: skip
GIMP_PYTHON = "3.13"  # trixie's python3


def build_root() -> None:
    partial = ROOT.with_name(ROOT.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["debootstrap", "--variant=minbase", "trixie", str(partial), MIRROR], check=True,
                   stdout=subprocess.DEVNULL)  # fmt: skip
    with mounted_proc(partial):
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        subprocess.run(["chroot", str(partial), "apt-get", "install", "-y", "-q", "--no-install-recommends",
                        *PACKAGES], check=True, env=env, stdout=subprocess.DEVNULL)  # fmt: skip
        subprocess.run(["chroot", str(partial), "apt-get", "clean"], check=True, env=env)
    partial.rename(ROOT)


class mounted_proc:  # noqa: N801 - a context manager
    def __init__(self, root: Path):
        self.target = root / "proc"

    def __enter__(self) -> None:
        subprocess.run(["mount", "-t", "proc", "proc", str(self.target)], check=True)

    def __exit__(self, *_) -> None:
        subprocess.run(["umount", "-l", str(self.target)], check=False)


def can_build() -> str | None:
    """Why the root cannot be built here, or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap and chroot)"
    if shutil.which("debootstrap") is None:
        return "needs debootstrap (apt-get install debootstrap)"
    return None


@pytest.fixture(scope="session")
def gimp_root() -> Path:
    if not (ROOT / "usr/bin/gimp-console-3.0").exists():
        reason = can_build()
        if reason is not None:
            if os.environ.get("CI"):
                pytest.fail(f"the GIMP tests must run in CI, but building the GIMP root {reason}")
            pytest.skip(f"real-GIMP tests skipped: building the GIMP root {reason}")
        build_root()
    return ROOT


@dataclass
class Gimp:
    """Runs Python inside a headless GIMP in the root, with the plug-in installed by install.sh."""

    root: Path
    work: Path  # inside the root
    config: Path  # the throwaway GIMP config folder, inside the root

    def inside(self, path: Path) -> str:
        return "/" + str(path.relative_to(self.root))

    def put(self, source: Path) -> str:
        """Copies a file into the root; returns its path as GIMP sees it."""
        target = self.work / source.name
        shutil.copyfile(source, target)
        return self.inside(target)

    def run(self, script: str, timeout: float = 300) -> dict:
        """Runs `script` in GIMP; the script fills the dict `out`, which comes back here."""
        result_file = self.work / "out.json"
        result_file.unlink(missing_ok=True)
        body = (
            PRELUDE
            + textwrap.indent(textwrap.dedent(script), "    ")
            + EPILOGUE.format(out=self.inside(result_file))
        )
        (self.work / "script.py").write_text(body)
        process = self.start(f"exec(open('{self.inside(self.work / 'script.py')}').read())")
        output, _ = process.communicate(timeout=timeout)
        if not result_file.exists():
            raise AssertionError(f"GIMP produced no result (exit {process.returncode}):\n{output[-4000:]}")
        return json.loads(result_file.read_text())

    def start(self, batch: str) -> subprocess.Popen:
        env = {"HOME": self.inside(self.work), "GIMP3_DIRECTORY": self.inside(self.config),
               "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}  # fmt: skip
        command = ["chroot", str(self.root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items()),
                   "gimp-console-3.0", "-i", "--no-fonts", "--batch-interpreter=python-fu-eval", "-b", batch,
                   "--quit"]  # fmt: skip
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


PRELUDE = """
import json, traceback
import gi
gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gimp, Gio, Gegl
out = {}

def load(path):
    return Gimp.file_load(Gimp.RunMode.NONINTERACTIVE, Gio.File.new_for_path(path))

def pixels(drawable, x=0, y=0, w=None, h=None):
    w = drawable.get_width() if w is None else w
    h = drawable.get_height() if h is None else h
    rect = Gegl.Rectangle.new(x, y, w, h)
    return bytes(drawable.get_buffer().get(rect, 1.0, "R'G'B'A u8", Gegl.AbyssPolicy.NONE))

def composite(image):
    copy = image.duplicate()
    flat = copy.flatten()
    data = pixels(flat)
    copy.delete()
    return data

def impasto(image, layer, **arguments):
    procedure = Gimp.get_pdb().lookup_procedure("python-fu-impasto")
    config = procedure.create_config()
    config.set_property("run-mode", Gimp.RunMode.NONINTERACTIVE)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [layer])
    for name, value in arguments.items():
        if name == "style-file":
            value = Gio.File.new_for_path(value)
        config.set_property(name, value)
    result = procedure.run(config)
    return result.index(0).value_nick, result.index(1)  # the new layer, or the error message

try:
"""

EPILOGUE = """
except Exception:
    out["exception"] = traceback.format_exc()
with open("{out}", "w") as f:
    json.dump(out, f)
"""


@pytest.fixture(scope="session")
def gimp(gimp_root: Path) -> Iterator[Gimp]:
    work = gimp_root / "tmp" / f"impasto-test-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    config = work / "gimp-config"
    config.mkdir(parents=True)
    subprocess.run([str(REPO / "install.sh"), "--plugin-only", "--gimp-dir", str(config),
                    "--gimp-python-version", GIMP_PYTHON], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        yield Gimp(gimp_root, work, config)
    finally:
        shutil.rmtree(work, ignore_errors=True)
