"""The style dialog as a user meets it, in each real GIMP (3.0 and 3.2, see conftest.py) under Xvfb, its
buttons pressed by autopilot.py: it fits a 1366×768 screen, reads in order, keeps its width, and keeps
errors in place.

Slow (a GIMP start is about 5 s): run alone with `pytest -m slow`. CI runs them.
"""

from __future__ import annotations

import logging
import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import running_server
from impasto.client import Client
from impasto.protocol import (
    PREVIEW_SIDE,
    ImageHeader,
    ImpastoError,
    JobPlan,
    Settings,
    StyleChoice,
    split_token,
)
from interactive import interactive_run
from wire import job_lines

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
    said_in_order(  # the connect, on its own thread, may end before or after the step "connected" begins
        said,
        "server section: closed",
        f"style: {presets[0]}",
        f"status: Connected to {server}: {len(presets)} presets",
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
             "set:token=wrong", "connect", "connected", "set:token=s3cret", "connect", "connected", "measure",
             "choose:starry-night", "set:size=48", "set:iterations=3", "ok"]  # fmt: skip
    out, said = gimp.run_gui(
        "in-place", interactive_run(content, server="127.0.0.1:9"), autopilot=",".join(steps)
    )
    assert out is not None and out["status"] == "success", (out, said)
    assert out["after"] == ["Impasto: Starry Night", *out["before"]], out
    # As first shown, with its Server section open, it fits too; connecting does not change its width.
    (width, height), connected = sizes(said)
    assert height <= MAX_HEIGHT and connected[0] == width, sizes(said)
    error = re.search(r"impasto-autopilot: status: ((?!Connecting to).*127\.0\.0\.1:9.*)", said)
    assert error and "Server field" in error.group(1) and "--" not in error.group(1), said
    # The first connect fails on its own thread: before or after the autopilot's first step ("connected")
    # begins, as the machine's load has it.
    said_in_order(
        said,
        "ok: insensitive Choose a style first",
        "server section: open",
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


def test_save_settings_never_writes_the_token(gimp, token_server: str, images: Path):
    """The token typed, then GIMP's Save Settings pressed and OK: the settings file GIMP writes (and its
    last values) hold the server but not the token, which still reaches the job."""
    gimp.forget_last_values()
    content = gimp.put(images / "content" / "coffee.png")
    steps = ["connected", "set:token=s3cret", "connect", "connected", "save-settings", "choose:starry-night",
             "set:size=48", "set:iterations=3", "ok"]  # fmt: skip
    out, said = gimp.run_gui(
        "save-settings", interactive_run(content, server=token_server), autopilot=",".join(steps)
    )
    assert out is not None and out["status"] == "success", (out, said)
    said_in_order(
        said, "set:token=s3cret", "connect", f"status: Connected to {token_server}", "save-settings"
    )
    saved = {
        path.name: path.read_text(errors="replace") for path in (gimp.config / "plug-in-settings").iterdir()
    }
    assert any(name.endswith(".default") and token_server in text for name, text in saved.items()), saved
    assert [name for name, text in saved.items() if "s3cret" in text] == [], saved


def test_a_pasted_pairing_string_leaves_its_token_in_the_token_field(gimp, remote, images: Path):
    """The one string a GPU machine prints, pasted into Server: its token goes to the Token field, so that
    GIMP's Save Settings keeps the address and the certificate's fingerprint but never the token; OK paints
    with it. Before, Save Settings wrote the whole string, token and all, in plain text."""
    string, _ = remote
    address, token = split_token(string)
    gimp.forget_last_values()
    content = gimp.put(images / "content" / "coffee.png")
    steps = [f"set:server={string}", "connect", "connected", "save-settings", "choose:udnie", "set:size=48",
             "set:iterations=3", "ok"]  # fmt: skip
    out, said = gimp.run_gui("pairing-paste", interactive_run(content), autopilot=",".join(steps))
    assert out is not None and out["status"] == "success", (out, said)
    saved = {
        path.name: path.read_text(errors="replace") for path in (gimp.config / "plug-in-settings").iterdir()
    }
    assert any(name.endswith(".default") and address in text for name, text in saved.items()), saved
    assert [name for name, text in saved.items() if token in text] == [], saved


@pytest.fixture
def silent_server() -> Iterator[str]:
    """An address that takes connections and never answers: each call there waits out its timeout."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


def test_a_slow_server_leaves_the_dialog_usable_and_its_late_news_is_dropped(
    gimp, server: str, silent_server: str, images: Path
):
    """A server that never answers (the dialog's calls wait 3 s each): the dialog says it is connecting and
    works meanwhile. OK pressed then, the Server field changed to a server that answers and Connect
    pressed: it connects there, but OK does not go on for that server, and the silent server's failure,
    when it comes, is dropped (the status line never names it, the Server section stays closed)."""
    gimp.forget_last_values()
    content = gimp.put(images / "content" / "coffee.png")
    steps = ["ok", f"set:server={server}", "connect", "connected", "connects-ended", "cancel"]
    out, said = gimp.run_gui(
        "slow-server",
        interactive_run(content, server=silent_server, style="starry-night"),
        autopilot=",".join(steps),
    )
    assert out is not None and out["status"] == "cancel" and out["after"] == out["before"], (out, said)
    said_in_order(
        said,
        f"status: Connecting to {silent_server}…",
        "ok",
        "dialog still open",
        f"set:server={server}",
        "connect",
        f"status: Connected to {server}",
        "connects-ended",
        "cancel",
    )
    statuses = re.findall(r"impasto-autopilot: status: (.*)", said)
    assert [line for line in statuses if silent_server in line and "Connecting" not in line] == [], said
    assert "server section: open" not in said, said


def said_after(said: str, step: str, prefix: str) -> str:
    """What the autopilot said first with `prefix` after it said `step`."""
    at = said.index(f"impasto-autopilot: {step}\n")
    return re.compile(rf"impasto-autopilot: {re.escape(prefix)}(.*)").search(said, at).group(1)


def preview_sizes(said: str) -> list[tuple[int, int]]:
    return [(int(w), int(h)) for w, h in re.findall(r"impasto-autopilot: preview shown: (\d+)x(\d+)", said)]


def beginning(plan: JobPlan) -> tuple[int, int]:
    """The size of the scale of `plan` that a preview paints: its first."""
    scale = plan.scales[0]
    return scale.width, scale.height


def job_sizes(caplog) -> list[tuple[str, str, str]]:
    """(pixels, size, outcome) of each job the servers in this process logged."""
    found = [
        re.search(r" pixels=(\d+) size=(\S+) .* outcome=(\w+)", line) for line in job_lines(caplog.records)
    ]
    return [match.groups() for match in found]


def test_the_cost_line_says_what_ok_costs_and_the_preview_is_its_beginning(
    gimp, server: str, images: Path, caplog
):
    """The cost line says how long OK takes on which device and at what working size, as the server plans
    it, and follows the choices; the preview is OK's own job, its first scale, sent as a small copy of the
    layer (the server logs its pixels), and is as large as the plan's first scale."""
    caplog.set_level(logging.INFO, logger="impasto.jobs")
    gimp.forget_last_values()
    content = gimp.put(images / "content" / "chelsea.png")  # 256×170
    header = ImageHeader("rgba8", 256 * 170 * 4, 256, 170)
    with Client(server) as client:
        info = client.info()
        default = client.plan(header, [StyleChoice("starry-night")])
        small = client.plan(header, [StyleChoice("starry-night")], Settings(size=128))
    started = len(job_lines(caplog.records))
    steps = ["connected", "choose:starry-night", "cost", "preview-shown", "set:size=128", "cost", "preview-shown",
             "cancel"]  # fmt: skip
    out, said = gimp.run_gui("cost", interactive_run(content, server=server), autopilot=",".join(steps))
    assert out is not None and out["status"] == "cancel" and out["after"] == out["before"], (out, said)
    device = re.escape(f"on {default.device.kind} ({default.device.name})")
    width, height = default.working_width, default.working_height
    assert re.fullmatch(
        rf"OK takes about \d+ (s|min) {device}, at {width}×{height} px\.",
        said_after(said, "cost", "cost shown: "),
    ), said
    assert (small.working_width, small.working_height) == (128, 85)
    assert said_after(said, "set:size=128", "cost shown: ").endswith(", at 128×85 px."), said
    assert said_after(said, "choose:starry-night", "preview shown: ") == "x".join(
        map(str, beginning(default))
    )
    assert said_after(said, "set:size=128", "preview shown: ") == "x".join(map(str, beginning(small)))
    assert preview_sizes(said) and all(max(size) <= PREVIEW_SIDE for size in preview_sizes(said)), said
    # The previews' jobs: the layer as it is (256×170) at the server's working size, then at 128 px.
    jobs = job_sizes(caplog)[started:]
    assert ("43520", str(info.default_size), "ok") in jobs and ("10880", "128", "ok") in jobs, jobs
    assert {outcome for *_, outcome in jobs} <= {"ok", "cancelled"}, jobs


@pytest.fixture(scope="module")
def budget_server(images: Path) -> Iterator[str]:
    """A server whose jobs may use 1 GiB of memory: a 1500×1000 layer at full size is painted in tiles, in
    fp32 for many minutes (the slow job the test needs, whichever precision this CPU would pick)."""
    budget = ("--memory-budget", "1GiB", "--precision", "fp32")
    with running_server("--styles-dir", str(images / "styles"), *budget) as address:
        yield address


def test_full_size_shows_its_tiles_and_a_long_job_asks_first(gimp, budget_server: str, images: Path, caplog):
    """Full size on a 1500×1000 layer that a CPU paints in tiles for many minutes: the cost line names the
    tiles and a GPU server; the preview is the full-size job's first scale, from a 512 px copy of the
    layer; OK asks first, and Cancel there keeps the dialog open with nothing painted. A working size the
    server's memory has no room for: the cost line says the server's refusal, and OK keeps the dialog open."""
    caplog.set_level(logging.INFO, logger="impasto.jobs")
    gimp.forget_last_values()
    content = gimp.put(images / "content" / "chelsea.png")
    header = ImageHeader("rgba8", 1500 * 1000 * 4, 1500, 1000)
    with Client(budget_server) as client:
        full = client.plan(header, [StyleChoice("starry-night")], Settings(full_size=True))
        with pytest.raises(ImpastoError) as refusal:
            client.plan(header, [StyleChoice("starry-night")], Settings(size=2000))
    assert full.tiles and full.estimated_seconds > 300, full  # the case this test is for
    started = len(job_lines(caplog.records))
    steps = ["connected", "choose:starry-night", "cost", "preview-shown", "measure", "ok", "answer:cancel",
             "cost", "set:full-size=false", "set:size=2000", "cost", "measure", "ok", "cancel"]  # fmt: skip
    script = interactive_run(content, scale_to=(1500, 1000), server=budget_server, full_size=True)
    out, said = gimp.run_gui("long", script, autopilot=",".join(steps))
    assert out is not None and out["status"] == "cancel" and out["after"] == out["before"], (out, said)
    at_full_size = f"at 1500×1000 px in {full.tiles} tiles — a GPU server would be much faster"
    cost = said_after(said, "choose:starry-night", "cost shown: ")
    assert re.fullmatch(rf"OK takes about .+ on cpu \(.+\), {at_full_size}\.", cost), said
    question = said_after(said, "ok", "question: ")
    assert re.fullmatch(
        rf"This will take about .+ on cpu \(.+\)\. Paint anyway\? \| A{at_full_size[1:]}\.", question
    )
    said_in_order(said, "ok", "question: ", "answer:cancel", "cost shown: OK takes", "set:size=2000")
    # Refused: the server's own sentence, in GIMP's words; OK leaves the dialog open and asks nothing.
    sentence = refusal.value.sentence("gimp")
    assert said_after(said, "set:size=2000", "cost shown: ") == f"{sentence[:1].upper()}{sentence[1:]}.", said
    said_in_order(said, "set:size=2000", "cost shown: ", "ok", "dialog still open", "cancel")
    assert said.count("impasto-autopilot: question: ") == 1, said
    # The longest lines it has (two or three lines of text) still leave the dialog on a 1366×768 screen.
    assert all(height <= MAX_HEIGHT for _, height in sizes(said)), sizes(said)
    assert said_after(said, "choose:starry-night", "preview shown: ") == "x".join(map(str, beginning(full)))
    assert all(max(size) <= PREVIEW_SIDE for size in preview_sizes(said)), said
    # Only previews ran: the layer sent at 512×341, to be painted as the 1500 px job begins.
    jobs = job_sizes(caplog)[started:]
    assert jobs and {(pixels, size) for pixels, size, _ in jobs} == {("174592", "1500")}, jobs
    assert ("174592", "1500", "ok") in jobs, jobs
