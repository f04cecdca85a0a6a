"""The plug-in starts its own server, the one impasto-server.json in GIMP's folder names, when the address
it would use is that server's and nothing answers there: in each real GIMP (3.0 and 3.2, see
conftest.py), with this checkout's impasto-server started inside the GIMP root.

The checkout, its virtual environment and the Python installation behind it are bind-mounted into the
root at their own paths, so that the command install.sh records runs there as it does here. Each test
records a free port as the server's address, so that nothing here touches 127.0.0.1:50051, and kills
every server started on it afterwards.

Slow (a GIMP start is about 5 s, a server start about 10 s): run alone with `pytest -m slow`. CI runs them.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import free_port, kill_servers_on, servers_on, wait_until_gone
from interactive import interactive_run

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
SERVER = Path(sys.executable).with_name("impasto-server")  # this virtual environment's
COMMAND = [str(SERVER), "--device", "cpu"]  # what the tests record in impasto-server.json
STYLE = 'style="starry-night", size=48, iterations=3'  # a built-in preset, a quick job
NEW_LAYER = "Impasto: The Starry Night"
STARTING = "Starting the local Impasto server…"


def outermost(paths: set[Path]) -> list[Path]:
    """The paths that lie inside none of the others."""
    return sorted(p for p in paths if not any(other != p and other in p.parents for other in paths))


@pytest.fixture(scope="module")
def checkout_inside(gimp) -> Iterator[None]:
    """This checkout, its virtual environment and the Python installation the environment was made from
    (the real path of its interpreter), bind-mounted into the GIMP root at the same paths; unmounted (lazily)
    and the folders made for them removed afterwards."""
    assert SERVER.exists(), f"{SERVER} is missing: run ./install.sh"
    installation = Path(os.path.realpath(sys.executable)).parents[1]  # …/versions/3.11.7 of bin/python3.11
    sources = outermost({REPO, Path(sys.prefix), installation})
    made: list[Path] = []  # folders created in the root for the mounts, deepest last
    mounted: list[Path] = []
    try:
        for source in sources:
            target = gimp.root / source.relative_to("/")
            missing = [target, *(p for p in target.parents if gimp.root in p.parents)]
            made += reversed([p for p in missing if not p.exists()])
            target.mkdir(parents=True, exist_ok=True)
            subprocess.run(["mount", "--bind", str(source), str(target)], check=True)
            mounted.append(target)
        yield
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "-l", str(target)], check=False)
        for folder in reversed(made):
            with contextlib.suppress(OSError):  # another test run still mounts something there
                folder.rmdir()


@dataclass
class OwnServer:
    """The plug-in's own server for one test: a free port, recorded in impasto-server.json."""

    gimp: object
    port: int

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        """The server's log where the launcher keeps it: the user's cache folder (HOME is gimp.work)."""
        return self.gimp.work / ".cache" / "impasto" / "server.log"

    def record(self, **fields) -> str:
        """A line of a GIMP script that writes impasto-server.json with `fields`."""
        path = self.gimp.inside(self.gimp.config / "impasto-server.json")
        return f"with open({path!r}, 'w') as f: json.dump({fields!r}, f)"

    def starts(self) -> int:
        """How many servers the launcher started on this port (its log's "starting:" lines)."""
        text = self.log.read_text() if self.log.exists() else ""
        return sum("starting:" in line and f" --port {self.port} " in line for line in text.splitlines())


@pytest.fixture
def own_server(gimp, checkout_inside) -> Iterator[OwnServer]:
    """impasto-server.json naming this checkout's server at a free port, the last address used forgotten
    (so that an empty Server field means the plug-in's own server); both files are put back afterwards,
    and every server started on that port is killed."""
    record, remembered = gimp.config / "impasto-server.json", gimp.config / "impasto.json"
    kept = {path: path.read_bytes() if path.exists() else None for path in (record, remembered)}
    server = OwnServer(gimp, free_port())
    record.write_text(json.dumps({"command": COMMAND, "address": server.address}))
    if remembered.exists():
        saved = json.loads(remembered.read_text())
        saved.pop("server", None)
        remembered.write_text(json.dumps(saved))
    server.log.unlink(missing_ok=True)
    try:
        yield server
    finally:
        kill_servers_on(server.port)
        for path, content in kept.items():
            if content is None:
                path.unlink(missing_ok=True)
            else:
                path.write_bytes(content)


# A line of a GIMP script: servers_on(port), the process ids of the servers the launcher told to listen there.
SERVERS_ON = (
    "import subprocess; servers_on = lambda port: [int(pid) for pid in subprocess.run(['pgrep', '-f', '--', "
    "'--port %d --idle-exit' % port], capture_output=True, text=True).stdout.split()]"
)


def test_a_script_starts_the_server_and_the_next_run_reuses_it(gimp, own_server: OwnServer, images: Path):
    """With no server running and the Server field empty, a non-interactive call starts the recorded
    server and gets its new layer; the next call reuses that server (the same process)."""
    content = gimp.put(images / "content" / "coffee.png")
    out = gimp.run(f"""
        {SERVERS_ON}
        image = load({content!r})
        source = image.get_layers()[0]
        out["before"] = servers_on({own_server.port})
        runs = []
        for _ in range(2):
            status, layer = impasto(image, source, server="", {STYLE})
            runs.append([status, layer.get_name() if status == "success" else str(layer), servers_on({own_server.port})])
        out["runs"] = runs
    """)
    assert "exception" not in out, out.get("exception")
    assert out["before"] == []
    (first, name, pids), (second, second_name, pids_after) = out["runs"]
    assert [first, name] == ["success", NEW_LAYER], out
    assert [second, second_name] == ["success", f"{NEW_LAYER} #1"], out
    assert len(pids) == 1 and pids_after == pids, out  # one server, the same process both times
    assert servers_on(own_server.port) == pids and own_server.starts() == 1


def test_the_dialog_starts_the_server_then_connects_and_ok_paints(gimp, own_server: OwnServer, images: Path):
    """Filters ▸ Artistic ▸ Impasto Style Transfer… with no server running: the dialog's line says that
    the plug-in starts its server, then that it is connected; OK gives the new layer. The first run's
    screenshots (starting, then connected with its preview) are kept in build/screenshots/."""
    gimp.forget_last_values()
    content = gimp.put(images / "content" / "coffee.png")
    script = interactive_run(content, server="", style="starry-night")
    steps = "shot:first-run-starting,connected,preview-shown,shot:first-run,set:size=48,set:iterations=3,ok"
    out, said = gimp.run_gui("own-server", script, autopilot=steps)
    assert out is not None and out["status"] == "success", (out, said)
    gimp.keep_screenshots("first-run-starting", "first-run")
    assert out["after"] == [NEW_LAYER, *out["before"]], out
    starting = said.find(f"status: {STARTING}")
    connected = said.find(f"status: Connected to {own_server.address}")
    assert 0 <= starting < connected, said
    assert len(servers_on(own_server.port)) == 1 and own_server.starts() == 1


def test_the_own_server_is_remembered_wherever_its_record_moves_it(gimp, own_server: OwnServer, images: Path):
    """Filters ▸ Repeat (last values, which remembers the server used) with the Server field empty starts
    the recorded server; once impasto-server.json names another port, as the plug-in's "port taken" advice
    says, the next run starts and uses the server there, not the one remembered at the old port."""
    gimp.forget_last_values()
    moved = OwnServer(gimp, free_port())
    content = gimp.put(images / "content" / "coffee.png")
    repeat = f'impasto(image, source, run_mode=Gimp.RunMode.WITH_LAST_VALS, server="", {STYLE})[0]'
    try:
        out = gimp.run(f"""
            {SERVERS_ON}
            image = load({content!r})
            source = image.get_layers()[0]
            out["first"] = [{repeat}, servers_on({own_server.port})]
            {moved.record(command=COMMAND, address=moved.address)}
            out["moved"] = [{repeat}, servers_on({moved.port})]
        """)
    finally:
        kill_servers_on(moved.port)
    assert "exception" not in out, out.get("exception")
    assert out["first"][0] == "success" and len(out["first"][1]) == 1, out
    assert out["moved"][0] == "success" and len(out["moved"][1]) == 1, out


def test_notepads_record_is_read_and_a_windows_path_says_how_to_write_it(gimp, own_server: OwnServer):
    """impasto-server.json as Notepad saves it (UTF-8 that starts with a BOM) is read; a Windows path typed
    as it is (C:\\Users\\…, no JSON string) is a problem that says how to write it."""
    record = {"command": COMMAND, "address": own_server.address}
    texts = {
        "bom": "\ufeff" + json.dumps(record),
        "backslashes": r'{"command": ["C:\Users\me\impasto-server.exe"]}',
    }
    out = gimp.run(f"""
        {gimp.plug_in_modules()}
        from impasto_gimp.local_server import record_file, recorded
        for name, text in {texts!r}.items():
            with open(record_file(), "w", encoding="utf-8") as f:
                f.write(text)
            found = recorded()
            out[name] = [found.command, found.address, found.problem]
    """)
    assert "exception" not in out, out.get("exception")
    assert out["bom"] == [COMMAND, own_server.address, None], out
    command, _, problem = out["backslashes"]
    assert command is None and problem.endswith(r"; in a path such as C:\Users, write each \ as \\ or /"), out


def test_two_runs_started_together_leave_one_server(gimp, own_server: OwnServer, images: Path):
    """Two GIMPs call the plug-in at the same moment (each waits until the other is ready), both finding
    no server: one starts it, the other waits for it to answer; both get their layer."""
    content = gimp.put(images / "content" / "coffee.png")
    ready = [gimp.work / f"ready-{index}" for index in range(2)]
    for flag in ready:
        flag.unlink(missing_ok=True)
    script = """
        import os, time
        open({mine!r}, "w").close()
        deadline = time.monotonic() + 120
        while not all(os.path.exists(flag) for flag in {flags!r}) and time.monotonic() < deadline:
            time.sleep(0.05)
        image = load({content!r})
        status, layer = impasto(image, image.get_layers()[0], server="", {style})
        out["run"] = [status, layer.get_name() if status == "success" else str(layer)]
    """
    flags = [gimp.inside(flag) for flag in ready]
    scripts = [script.format(mine=mine, flags=flags, content=content, style=STYLE) for mine in flags]
    outs = gimp.run_together(scripts)
    assert [out.get("run") for out in outs] == [["success", NEW_LAYER]] * 2, outs
    assert len(servers_on(own_server.port)) == 1
    assert own_server.starts() == 1  # the other never tried


def test_an_unused_server_ends_after_the_recorded_idle_time(gimp, own_server: OwnServer, images: Path):
    """idle_exit_minutes in impasto-server.json: the started server ends itself that long after its
    last job."""
    content = gimp.put(images / "content" / "coffee.png")
    out = gimp.run(f"""
        {SERVERS_ON}
        {own_server.record(command=COMMAND, address=own_server.address, idle_exit_minutes=0.05)}
        image = load({content!r})
        status, layer = impasto(image, image.get_layers()[0], server="", {STYLE})
        out["status"], out["pids"] = status, servers_on({own_server.port})
    """)
    assert "exception" not in out, out.get("exception")
    assert out["status"] == "success" and len(out["pids"]) == 1, out
    assert wait_until_gone(out["pids"][0], timeout=120), "the server did not end after its idle time"
    assert "no call and no job for 0.05 minutes" in own_server.log.read_text()


def test_a_server_that_fails_to_start_is_an_error_with_its_log(gimp, own_server: OwnServer, images: Path):
    broken = gimp.work / "broken-server"
    broken.write_text("#!/bin/sh\necho 'cannot load the model: the disk is full' >&2\nexit 1\n")
    broken.chmod(0o755)
    content = gimp.put(images / "content" / "coffee.png")
    out = gimp.run(f"""
        {own_server.record(command=[gimp.inside(broken)], address=own_server.address)}
        image = load({content!r})
        status, message = impasto(image, image.get_layers()[0], server="", {STYLE})
        out["status"], out["message"] = status, str(message)
        out["layers"] = len(image.get_layers())
    """)
    assert "exception" not in out, out.get("exception")
    message = out["message"]
    assert out["status"] == "execution-error" and out["layers"] == 1, out
    assert "The Impasto server stopped while starting (exit status 1)" in message, message
    assert gimp.inside(own_server.log) in message and message.endswith("the disk is full"), message
    assert "--" not in message  # GIMP's words, no command-line flags


def test_other_addresses_are_never_started_and_a_missing_server_says_what_to_do(
    gimp, own_server: OwnServer, images: Path
):
    """Only the recorded address is started: another one, on this computer too, stays an error that names
    it. A recorded program that is not there, or a record without one, says how to install or name a
    server, in GIMP's words."""
    other = f"127.0.0.1:{free_port()}"
    content = gimp.put(images / "content" / "coffee.png")
    out = gimp.run(f"""
        image = load({content!r})
        source = image.get_layers()[0]
        status, message = impasto(image, source, server={other!r}, {STYLE})
        out["other"] = [status, str(message)]
        {own_server.record(command=["/nowhere/impasto-server"], address=own_server.address)}
        status, message = impasto(image, source, server="", {STYLE})
        out["missing"] = [status, str(message)]
        {own_server.record(address=own_server.address)}
        status, message = impasto(image, source, server="", {STYLE})
        out["without_command"] = [status, str(message)]
        out["layers"] = len(image.get_layers())
    """)
    assert "exception" not in out, out.get("exception")
    assert out["other"][0] == "execution-error", out
    assert (
        f"Cannot reach an Impasto server at {other}" in out["other"][1] and "Server field" in out["other"][1]
    )
    assert servers_on(int(other.rpartition(":")[2])) == [] and own_server.starts() == 0
    status, message = out["missing"]
    assert status == "execution-error", out
    assert "No Impasto server is installed on this computer (looked for /nowhere/impasto-server)" in message
    status, message = out["without_command"]
    assert status == "execution-error", out
    assert 'impasto-server.json is not usable: its "command" must be a list' in message, message
    for _, message in (out["missing"], out["without_command"]):
        assert "install.sh" in message and "impasto-server.json" in message and "Server field" in message
        assert "--" not in message, message
    assert out["layers"] == 1
