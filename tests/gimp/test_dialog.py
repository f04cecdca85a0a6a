"""The style dialog as a user meets it, in each real GIMP (3.0 and 3.2, see conftest.py) under Xvfb, its
buttons pressed by autopilot.py: it fits a 1366×768 screen, reads in order, keeps its width, and keeps
errors in place.

Slow (a GIMP start is about 5 s): run alone with `pytest -m slow`. CI runs them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import running_server
from impasto.client import Client
from interactive import interactive_run

pytestmark = pytest.mark.slow
MAX_HEIGHT = 700  # px: a 1366×768 screen less GIMP's menu and the desktop's panels

# A browser for the Help button: the default application for HTML in the throwaway HOME, which writes the
# address it was given to a file.
BROWSER_DESKTOP = """[Desktop Entry]
Type=Application
Name=Stand-in browser
Exec={script} %u
MimeType=text/html;
"""


def stand_in_browser(gimp) -> Path:
    """Installs the stand-in browser in the GIMP root's HOME; returns the file it writes (in the root)."""
    opened = gimp.work / "browser-opened.txt"
    opened.unlink(missing_ok=True)
    script = gimp.work / "browser.sh"
    script.write_text(
        f'#!/bin/sh\necho "$1" > {gimp.inside(opened)}.part && mv {gimp.inside(opened)}.part {gimp.inside(opened)}\n'
    )
    script.chmod(0o755)
    applications = gimp.work / ".local" / "share" / "applications"
    applications.mkdir(parents=True, exist_ok=True)
    (applications / "impasto-browser.desktop").write_text(BROWSER_DESKTOP.format(script=gimp.inside(script)))
    (gimp.work / ".config").mkdir(exist_ok=True)
    (gimp.work / ".config" / "mimeapps.list").write_text(
        "[Default Applications]\ntext/html=impasto-browser.desktop\n"
    )
    return opened


def said_in_order(said: str, *lines: str) -> None:
    """Each of `lines` is in the log (autopilot's lines start "impasto-autopilot: "), in this order."""
    at = 0
    for line in lines:
        found = said.find(f"impasto-autopilot: {line}", at)
        assert found >= 0, f"{line!r} missing after position {at} of:\n{said[-6000:]}"
        at = found + 1


def sizes(said: str) -> list[tuple[int, int]]:
    return [(int(w), int(h)) for w, h in re.findall(r"impasto-autopilot: window: (\d+)x(\d+)", said)]


def test_the_dialog_fits_reads_in_order_and_opens_its_help(gimp, server: str, images: Path):
    """Opened with nothing chosen: connected, the Server section stays closed and the first preset is
    chosen; its height as first shown fits a 1366×768 screen, and choosing another preset or a style image
    keeps its width; the preview comes by itself, first and after each choice; Help opens the plug-in's own
    page (no "user manual is missing"); GIMP logs no mnemonic warning."""
    gimp.forget_last_values()
    content = gimp.put(images / "content" / "chelsea.png")
    style_file = gimp.put(images / "styles" / "udnie.jpg")
    opened = stand_in_browser(gimp)
    with Client(server) as client:
        presets = [preset.id for preset in client.styles()]
    steps = ["connected", "measure", "preview-shown", "choose:the-scream", "preview-shown", "measure",
             f"set:style-file={style_file}", "preview-shown", "measure", f"help:{gimp.inside(opened)}",
             "windows", "cancel"]  # fmt: skip
    out, said = gimp.run_gui("fits", interactive_run(content, server=server), autopilot=",".join(steps))
    assert out is not None and out["status"] == "cancel" and out["after"] == out["before"], (out, said)
    said_in_order(
        said,
        f"status: Connected to {server}: {len(presets)} presets",
        "server section: closed",
        f"style: {presets[0]}",
        "connected",
        "preview-shown",
        "preview shown",
        "choose:the-scream",
        "style: the-scream",
        "preview shown",
        f"set:style-file={style_file}",
        "style: \n",  # the style image replaces the preset
        "preview shown",
    )
    assert "server section: open" not in said, said
    measured = sizes(said)
    assert len(measured) == 3, said
    assert measured[0][1] <= MAX_HEIGHT, f"the dialog is {measured[0]} px as first shown"
    assert {width for width, _ in measured} == {measured[0][0]}, f"the width changed: {measured}"
    # Help: the page shipped with the plug-in, in the browser; no GIMP dialog about its manual.
    page = opened.read_text().strip().removeprefix("file://")  # a path or a file:// address: both are fine
    assert page.endswith("/plug-ins/impasto/help.html"), page
    assert "Impasto Style Transfer" in (gimp.root / page.lstrip("/")).read_text()
    windows = re.search(r"impasto-autopilot: windows: (.*)", said).group(1)
    assert "Impasto Style Transfer" in windows and "manual" not in windows.lower(), windows
    # Every field has its mnemonic, none twice (GIMP 3.2 says "no mnemonic for property …" otherwise).
    assert "mnemonic" not in said, said


@pytest.fixture(scope="module")
def token_server(images: Path) -> Iterator[str]:
    """An impasto-server on loopback that wants the token "s3cret"."""
    with running_server("--styles-dir", str(images / "styles"), token="s3cret") as address:
        yield address


def test_an_unreachable_server_and_a_refused_token_are_said_in_the_open_dialog(
    gimp, token_server: str, images: Path
):
    """A server that cannot be reached: the dialog opens anyway, the reason in its status line (in GIMP's
    words) and its Server section open; OK is greyed out until a style is chosen, and OK with the server
    still unreachable keeps the dialog open with the choices made. The Server field fixed and Connect
    pressed: the token is refused, said in place; the token typed and Connect pressed: the presets come
    and the section closes; OK then paints."""
    gimp.forget_last_values()
    content = gimp.put(images / "content" / "coffee.png")
    style_file = gimp.put(images / "styles" / "udnie.jpg")
    steps = ["connected", "measure", f"set:style-file={style_file}", "ok", f"set:server={token_server}",
             "set:token=wrong", "connect", "set:token=s3cret", "connect", "connected", "measure",
             "choose:starry-night", "set:size=48", "set:iterations=3", "ok"]  # fmt: skip
    out, said = gimp.run_gui(
        "in-place", interactive_run(content, server="127.0.0.1:9"), autopilot=",".join(steps)
    )
    assert out is not None and out["status"] == "success", (out, said)
    assert out["after"] == ["Impasto: Starry Night", *out["before"]], out
    # As first shown, with its Server section open, it fits too; connecting does not change its width.
    (width, height), connected = sizes(said)
    assert height <= MAX_HEIGHT and connected[0] == width, sizes(said)
    error = re.search(r"impasto-autopilot: status: (.*127\.0\.0\.1:9.*)", said)
    assert error and "Server field" in error.group(1) and "--" not in error.group(1), said
    said_in_order(
        said,
        "server section: open",
        "ok: insensitive Choose a style first",
        "connected",
        f"set:style-file={style_file}",
        "ok: sensitive",
        "ok",
        "status: ",  # OK tried the server again, and said so
        "dialog still open",
        f"set:server={token_server}",
        "connect",
        f"status: The server at {token_server} did not accept the token: the token sent is not this server's; "
        "enter the server's token in the Token field.",
        "set:token=s3cret",
        "connect",
        f"status: Connected to {token_server}",
        "server section: closed",
        "choose:starry-night",
        "style: starry-night",
        "ok",
        "dialog closed",
    )
