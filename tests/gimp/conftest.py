"""Real GIMPs in Debian roots, with the plug-in installed by install.sh.

Every test here runs in each GIMP the project supports (fixture ids `gimp-3.0` and `gimp-3.2`):

| id       | Debian | GIMP  | Python | root (env to override)                                   |
|----------|--------|-------|--------|----------------------------------------------------------|
| gimp-3.0 | trixie | 3.0.4 | 3.13   | /var/cache/impasto/gimp-trixie ($IMPASTO_GIMP_ROOT)      |
| gimp-3.2 | forky  | 3.2.x | 3.14   | /var/cache/impasto/gimp-forky ($IMPASTO_GIMP32_ROOT)     |

A root is built on first use with debootstrap (as root; a few minutes each) and cached. GIMP runs in
it with chroot and shares this machine's network, so the plug-in reaches an impasto-server on loopback.
Where a root cannot be built the tests skip, except under CI=true, where they fail.
"""

from __future__ import annotations

import collections
import functools
import json
import os
import shlex
import shutil
import subprocess
import textwrap
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from helpers import ServerProcess

REPO = Path(__file__).resolve().parents[2]
MIRROR = os.environ.get("IMPASTO_DEBIAN_MIRROR", "http://deb.debian.org/debian")
PACKAGES = ["gimp", "python3-gi", "gir1.2-gimp-3.0", "gir1.2-gegl-0.4", "gir1.2-babl-0.1",
            "xvfb", "xauth", "x11-apps", "x11-utils", "netpbm", "procps", "xdotool"]  # fmt: skip
# Added after the first roots were built: a cached root without them gets them on first use.
LATER_PACKAGES = {"xdotool": "usr/bin/xdotool"}  # package: a file it installs
SCRIPTS = Path("/usr/share/debootstrap/scripts")
AUTOPILOT = Path(__file__).with_name("autopilot.py")  # loaded by the plug-in's IMPASTO_TEST_HOOK


@dataclass(frozen=True)
class Suite:
    """One GIMP: the Debian suite that ships it and the Python it runs plug-ins with."""

    id: str
    debian: str
    root: Path
    python: str

    def binary(self, stem: str) -> str | None:
        """GIMP's program `stem` (gimp, gimp-console) as named in this root: `stem-3.0`, `stem-3.2`…"""
        found = sorted((self.root / "usr/bin").glob(f"{stem}-3.*"))
        return found[-1].name if found else None


SUITES = [
    Suite("gimp-3.0", "trixie", Path(os.environ.get("IMPASTO_GIMP_ROOT", "/var/cache/impasto/gimp-trixie")), "3.13"),
    Suite("gimp-3.2", "forky", Path(os.environ.get("IMPASTO_GIMP32_ROOT", "/var/cache/impasto/gimp-forky")), "3.14"),
]  # fmt: skip


def build_root(suite: Suite) -> None:
    partial = suite.root.with_name(suite.root.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    # An older debootstrap has no script for a newer suite (bookworm's knows no forky): sid's fits.
    script = [] if (SCRIPTS / suite.debian).exists() else [str(SCRIPTS / "sid")]
    subprocess.run(["debootstrap", "--variant=minbase", suite.debian, str(partial), MIRROR, *script],
                   check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    # The archive may serve a testing suite's Release file past its Valid-Until date.
    (partial / "etc/apt/apt.conf.d/99impasto").write_text('Acquire::Check-Valid-Until "false";\n')
    with mounted_proc(partial):
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        subprocess.run(["chroot", str(partial), "apt-get", "install", "-y", "-q", "--no-install-recommends",
                        *PACKAGES], check=True, env=env, stdout=subprocess.DEVNULL)  # fmt: skip
        subprocess.run(["chroot", str(partial), "apt-get", "clean"], check=True, env=env)
    partial.rename(suite.root)


def add_later_packages(suite: Suite) -> None:
    """Installs LATER_PACKAGES into a root built before they were listed (one pytest at a time)."""
    missing = [name for name, path in LATER_PACKAGES.items() if not (suite.root / path).exists()]
    if not missing or can_build() is not None:
        return  # the tests that need them fail, naming what is missing
    import fcntl

    with open(suite.root.with_name(suite.root.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        missing = [name for name in missing if not (suite.root / LATER_PACKAGES[name]).exists()]
        if not missing:
            return
        env = {"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        apt = ["chroot", str(suite.root), "apt-get", "-q"]
        with mounted_proc(suite.root):
            for command in (["update"], ["install", "-y", "--no-install-recommends", *missing], ["clean"]):
                # Offline, the tests that need them fail and say what is missing.
                subprocess.run([*apt, *command], check=False, env=env, stdout=subprocess.DEVNULL)


class mounted_proc:  # noqa: N801 - a context manager
    def __init__(self, root: Path):
        self.target = root / "proc"

    def __enter__(self) -> None:
        subprocess.run(["mount", "-t", "proc", "proc", str(self.target)], check=True)

    def __exit__(self, *_) -> None:
        subprocess.run(["umount", "-l", str(self.target)], check=False)


def can_build() -> str | None:
    """Why a root cannot be built here, or None."""
    if os.geteuid() != 0:
        return "needs root (debootstrap and chroot)"
    if shutil.which("debootstrap") is None:
        return "needs debootstrap (apt-get install debootstrap)"
    return None


@functools.cache
def cannot_run(suite: Suite) -> str | None:
    """Why this GIMP's tests cannot run here, or None (its root is there, or can be built)."""
    if suite.binary("gimp-console") is not None:
        return None if os.geteuid() == 0 else "running GIMP in its Debian root needs root (chroot)"
    reason = can_build() or mirror_unreachable(suite)
    return f"building the {suite.debian} root {reason}" if reason else None


def mirror_unreachable(suite: Suite) -> str | None:
    release = f"{MIRROR}/dists/{suite.debian}/Release"
    try:
        urllib.request.urlopen(urllib.request.Request(release, method="HEAD"), timeout=10).close()
    except urllib.error.HTTPError as error:
        return f"needs {release}, which answers {error.code} {error.reason}"
    except OSError as error:
        return f"needs {MIRROR}, which cannot be reached ({getattr(error, 'reason', error)})"
    return None


@pytest.fixture(scope="session", params=SUITES, ids=[suite.id for suite in SUITES])
def gimp_suite(request: pytest.FixtureRequest) -> Suite:
    """Each GIMP in turn, its root built on first use."""
    suite: Suite = request.param
    reason = cannot_run(suite)
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the GIMP tests must run in CI, but {reason}")
        pytest.skip(f"real-GIMP tests skipped: {reason}")
    if suite.binary("gimp-console") is None:
        build_root(suite)
        assert suite.binary("gimp-console"), f"no gimp-console-3.* in {suite.root}/usr/bin"
    add_later_packages(suite)
    return suite


@pytest.fixture(scope="session")
def gimp_root(gimp_suite: Suite) -> Path:
    return gimp_suite.root


@dataclass
class Gimp:
    """Runs Python inside a headless GIMP in the root, with the plug-in installed by install.sh."""

    root: Path
    work: Path  # inside the root
    config: Path  # the throwaway GIMP config folder, inside the root
    suite: Suite = SUITES[0]

    @property
    def console(self) -> str:
        """The headless program's name in this root (gimp-console-3.0, …)."""
        return self.suite.binary("gimp-console") or "gimp-console-3.0"

    @property
    def gui(self) -> str:
        """The GUI program's name in this root (gimp-3.0, …)."""
        return self.suite.binary("gimp") or "gimp-3.0"

    def inside(self, path: Path) -> str:
        return "/" + str(path.relative_to(self.root))

    def put(self, source: Path) -> str:
        """Copies a file into the root; returns its path as GIMP sees it."""
        target = self.work / source.name
        shutil.copyfile(source, target)
        return self.inside(target)

    def plug_in_modules(self) -> str:
        """A line of a GIMP script after which the installed plug-in's modules import (impasto_gimp.…), its
        vendored client first, as impasto.py has it."""
        plugin = self.inside(self.config / "plug-ins" / "impasto")
        return f"import sys; sys.path[:0] = [{plugin + '/vendor'!r}, {plugin!r}]"

    def command(self) -> list[str]:
        """The start of a command line that runs a program in the root, in a clean environment with
        the throwaway config folder (GIMP3_DIRECTORY: the same variable in 3.0 and 3.2) and temporary
        folder (GIMP 3.2 makes a /tmp/gimp-3.2-XXXXXX per start; a killed one leaves it behind)."""
        env = {"HOME": self.inside(self.work), "GIMP3_DIRECTORY": self.inside(self.config),
               "TMPDIR": self.inside(self.work), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}  # fmt: skip
        return ["chroot", str(self.root), "/usr/bin/env", "-i", *(f"{k}={v}" for k, v in env.items())]

    def run(self, script: str, timeout: float = 300) -> dict:
        """Runs `script` in GIMP; the script fills the dict `out`, which comes back here."""
        return self.run_together([script], timeout)[0]

    def run_together(self, scripts: list[str], timeout: float = 300) -> list[dict]:
        """Runs each script in a GIMP of its own, all at the same time (one config folder); each fills
        the dict `out`: they come back here, in order."""
        started = []
        for index, script in enumerate(scripts):
            result_file, script_file = self.work / f"out-{index}.json", self.work / f"script-{index}.py"
            result_file.unlink(missing_ok=True)
            body = PRELUDE + textwrap.indent(textwrap.dedent(script), "    ")
            script_file.write_text(body + EPILOGUE.format(out=self.inside(result_file)))
            started.append((self.start(f"exec(open({self.inside(script_file)!r}).read())"), result_file))
        outs = []
        for process, result_file in started:
            output, _ = process.communicate(timeout=timeout)
            if not result_file.exists():
                raise AssertionError(
                    f"GIMP produced no result (exit {process.returncode}):\n{output[-4000:]}"
                )
            outs.append(json.loads(result_file.read_text()))
        return outs

    def forget_last_values(self) -> None:
        """An interactive run starts from GIMP's last values (the .last file) over what the script set, Save
        Settings keeps a .default file, and the plug-in remembers the last server and the tokens that worked
        (impasto.json): each GUI test starts without another's."""
        for path in (self.config / "plug-in-settings").glob("*impasto*"):
            path.unlink()
        (self.config / "impasto.json").unlink(missing_ok=True)

    def start(self, batch: str) -> subprocess.Popen:
        command = [*self.command(), self.console, "-i", "--no-fonts",
                   "--batch-interpreter=python-fu-eval", "-b", batch, "--quit"]  # fmt: skip
        return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def keep_screenshots(self, *names: str, optional: tuple[str, ...] = ()) -> None:
        """Checks the screenshots NAME.png taken in the work folder (the screen's size, a picture rather
        than a blank) and keeps them in build/screenshots/ as impasto-NAME-SUITE.png, for a look and for
        docs/images/. Those in `optional` may be missing (a moment the run may pass before it is caught)."""
        from PIL import Image

        kept = Path(__file__).resolve().parents[2] / "build" / "screenshots"
        kept.mkdir(parents=True, exist_ok=True)
        for name in (*names, *optional):
            path = self.work / f"{name}.png"
            if not path.exists():
                assert name in optional, f"no {name} screenshot"
                continue
            screenshot = Image.open(path)
            assert screenshot.size == (1280, 900) and len(screenshot.convert("L").getcolors(65536)) > 50, name
            screenshot.save(kept / f"impasto-{name}-{self.suite.id}.png")

    def hook(self) -> str:
        """The GUI tests' autopilot (autopilot.py) copied into the root: IMPASTO_TEST_HOOK's value."""
        return self.put(AUTOPILOT)

    def run_gui(
        self, name: str, script: str, autopilot: str, timeout: float = 900
    ) -> tuple[dict | None, str]:
        """Runs GIMP with its windows, under Xvfb: `script` is its batch command (Python, which writes its
        findings as JSON to the path in the variable RESULT), while autopilot.py presses the plug-in's
        buttons as `autopilot` says. Returns the findings (None if it wrote none) and what GIMP, the
        plug-in and the autopilot printed."""
        result, log = self.work / f"{name}.json", self.work / f"{name}.log"
        result.unlink(missing_ok=True)
        (self.work / f"{name}.py").write_text(f"RESULT = {self.inside(result)!r}\n{script}")
        shell = self.work / f"{name}.sh"
        shell.write_text(
            GUI.format(
                hook=self.hook(),
                autopilot=shlex.quote(autopilot),  # a pairing string holds ? and &
                gimp=self.gui,
                script=self.inside(self.work / f"{name}.py"),
                log=self.inside(log),
                result=self.inside(result),
            )
        )
        shell.chmod(0o755)
        screen = ["xvfb-run", "-a", "-s", "-screen 0 1280x900x24", self.inside(shell)]
        ran = subprocess.run([*self.command(), *screen], capture_output=True, text=True, timeout=timeout)
        said = (log.read_text(errors="replace") if log.exists() else "") + ran.stdout + ran.stderr[-2000:]
        return (json.loads(result.read_text()) if result.exists() else None), said


# GIMP with its windows, the batch script run in it, and the plug-in's buttons pressed by the autopilot;
# until the script has written its result (or 10 minutes have passed).
GUI = """#!/bin/sh
IMPASTO_TEST_HOOK={hook} IMPASTO_AUTOPILOT={autopilot} {gimp} --no-splash --batch-interpreter=python-fu-eval \\
  -b "exec(open('{script}').read())" > {log} 2>&1 &
for i in $(seq 1 1200); do test -s {result} && break; sleep 0.5; done
kill $! 2>/dev/null
"""


PRELUDE = """
import json, traceback
import gi
gi.require_version("Gimp", "3.0")
gi.require_version("Gegl", "0.4")
from gi.repository import Gimp, Gio, Gegl
out = {}

# By value: str() of a status is '<enum GIMP_PDB_SUCCESS …>' in GIMP 3.0 (PyGObject 3.50), a number in 3.2 (3.58).
STATUS = {int(Gimp.PDBStatusType.SUCCESS): "success", int(Gimp.PDBStatusType.EXECUTION_ERROR): "execution-error",
          int(Gimp.PDBStatusType.CALLING_ERROR): "calling-error", int(Gimp.PDBStatusType.CANCEL): "cancel",
          int(Gimp.PDBStatusType.PASS_THROUGH): "pass-through"}

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

def impasto(image, layer, run_mode=Gimp.RunMode.NONINTERACTIVE, **arguments):
    procedure = Gimp.get_pdb().lookup_procedure("python-fu-impasto")
    config = procedure.create_config()
    config.set_property("run-mode", run_mode)
    config.set_property("image", image)
    config.set_core_object_array("drawables", [layer])
    for name, value in arguments.items():
        if name in ("style-file", "tls-ca"):
            value = Gio.File.new_for_path(value)
        config.set_property(name, value)
    result = procedure.run(config)
    status = result.index(0)
    return STATUS.get(int(status), f"status {int(status)}"), result.index(1)  # the new layer, or the error

try:
"""

EPILOGUE = """
except Exception:
    out["exception"] = traceback.format_exc()
with open("{out}", "w") as f:
    json.dump(out, f)
"""


@pytest.fixture(scope="module")
def server(images: Path) -> Iterator[str]:
    """An impasto-server on loopback whose presets are the test paintings (tests/data/styles)."""
    from helpers import running_server  # tests/helpers.py: tests/ is on the path once its conftest loaded

    with running_server("--styles-dir", str(images / "styles"), "--grace-seconds", "1") as address:
        yield address


@pytest.fixture(scope="module")
def remote(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ServerProcess]]:
    """`impasto-server --remote` on this machine, as on a GPU machine: (its pairing string, the server)."""
    from helpers import ServerProcess, free_port

    folder = tmp_path_factory.mktemp("remote")
    flags = ["--remote", "--advertise", "127.0.0.1", "--port", str(free_port()), "--state-dir",
             str(folder / "state"), "--styles-dir", str(images / "styles"), "--grace-seconds", "1"]  # fmt: skip
    server = ServerProcess(folder / "server.log", *flags)
    try:
        yield server.first_line(), server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def gimp(gimp_suite: Suite) -> Iterator[Gimp]:
    root = gimp_suite.root
    work = root / "tmp" / f"impasto-test-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    config = work / "gimp-config"
    config.mkdir(parents=True)
    subprocess.run([str(REPO / "install.sh"), "--plugin-only", "--gimp-dir", str(config),
                    "--gimp-python-version", gimp_suite.python], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        # GIMP 3.2's GTK (forky) loads icons through glycin, which needs /proc: without it the GUI
        # aborts on its first icon ("Failed to get the filename"). With it, where bwrap cannot make
        # namespaces (a chroot in a container), glycin notices and runs its loaders unsandboxed.
        with mounted_proc(root):
            yield Gimp(root, work, config, gimp_suite)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---- whether the real-GIMP tests run: said once before the first test, and counted in the last line ----

GIMP_TESTS = Path(__file__).resolve().parent
_outcomes: dict[str, str] = {}  # test id: passed, failed or skipped
_skip_reasons: list[str] = []


def pytest_collection_finish(session: pytest.Session) -> None:
    selected = sum(GIMP_TESTS in item.path.parents for item in session.items)
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if not selected or reporter is None:
        return
    reasons = [f"{suite.id} — {reason}" for suite in SUITES if (reason := cannot_run(suite))]
    if not reasons:
        unbuilt = [suite.debian for suite in SUITES if suite.binary("gimp-console") is None]
        building = f"; building the {' and '.join(unbuilt)} root first, a few minutes each" if unbuilt else ""
        reporter.write_line(f"real-GIMP tests: {selected} will run, in GIMP 3.0 and 3.2{building}")
        return
    fate = "fail (CI=true)" if os.environ.get("CI") else "be skipped"
    reporter.write_line(f"real-GIMP tests: will {fate}: {'; '.join(reasons)}", yellow=True, bold=True)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Only this folder's tests reach this conftest's hook."""
    if report.failed:
        _outcomes[report.nodeid] = "failed"
    elif report.skipped:
        _outcomes.setdefault(report.nodeid, "skipped")
        if isinstance(report.longrepr, tuple):
            _skip_reasons.append(
                report.longrepr[2].removeprefix("Skipped: ").removeprefix("real-GIMP tests skipped: ")
            )
    elif report.when == "call":
        _outcomes.setdefault(report.nodeid, "passed")


def pytest_unconfigure(config: pytest.Config) -> None:
    """The session's last line: after pytest's own summary."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or not _outcomes:
        return
    count = collections.Counter(_outcomes.values())
    ran = count["passed"] + count["failed"]
    line = f"real-GIMP tests: {ran} ran ({count['passed']} passed, {count['failed']} failed)"
    if count["skipped"]:
        line += f", {count['skipped']} skipped ({_skip_reasons[0] if _skip_reasons else 'see above'})"
    reporter.write_line(line, green=ran > 0 and not count["failed"], red=ran == 0 or count["failed"] > 0)
