"""impasto.launcher: a client that finds no server at the local address starts one, once, detached."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import free_port, kill_servers_on, running_server, servers_on, system_tool, wait_until_gone
from impasto import launcher
from impasto.client import Client, impasto_answers
from impasto.launcher import LaunchError, ensure_local_server

SERVER = Path(sys.executable).with_name("impasto-server")  # this virtual environment's


@pytest.fixture
def port(tmp_path: Path) -> Iterator[int]:
    """A free loopback port; every server started on it is killed afterwards."""
    chosen = free_port()
    yield chosen
    kill_servers_on(chosen)


@pytest.fixture
def command(tmp_path: Path) -> list[str]:
    assert SERVER.exists(), f"{SERVER} is missing: run ./install.sh"
    return [str(SERVER), "--device", "cpu", "--styles-dir", str(tmp_path / "styles")]


def test_starts_a_server_once_and_reuses_it(port: int, command: list[str], tmp_path: Path):
    address = f"127.0.0.1:{port}"
    cues = []  # the caller's cue to say that a server is being started

    def ensure() -> int | None:
        return ensure_local_server(
            address, command, impasto_answers, log_dir=tmp_path, starting=lambda: cues.append("starting")
        )

    pid = ensure()
    assert pid is not None and servers_on(port) == [pid] and cues == ["starting"]
    with Client(address, timeout=10) as client:
        assert client.info().idle_exit_minutes == 20  # the launcher's default
    assert ensure() is None
    assert servers_on(port) == [pid] and cues == ["starting"]  # it answered: nothing to say
    assert "listening on" in (tmp_path / "server.log").read_text()


def test_callers_at_the_same_moment_leave_one_server(port: int, command: list[str], tmp_path: Path):
    """GIMP starts a plug-in process per call: four of them at once, each finding no server."""
    script = (
        "import sys; from impasto.launcher import ensure_local_server; "
        "from impasto.client import impasto_answers; "
        "print(ensure_local_server(sys.argv[1], sys.argv[3:], impasto_answers, log_dir=sys.argv[2]))"
    )
    callers = [
        subprocess.Popen(
            [sys.executable, "-c", script, f"127.0.0.1:{port}", str(tmp_path), *command],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outcomes = [caller.communicate(timeout=300) for caller in callers]
    assert all(caller.returncode == 0 for caller in callers), [err for _, err in outcomes]
    started = [out.strip() for out, _ in outcomes if out.strip() != "None"]
    assert len(started) == 1, outcomes  # one started it, the others waited for it
    assert servers_on(port) == [int(started[0])]
    assert (tmp_path / "server.log").read_text().count("starting:") == 1  # the others never tried


def test_an_unused_server_ends_itself(port: int, command: list[str], tmp_path: Path):
    pid = ensure_local_server(
        f"127.0.0.1:{port}", command, impasto_answers, log_dir=tmp_path, idle_minutes=0.02
    )
    assert pid is not None
    assert wait_until_gone(pid, timeout=120), "the server did not end after its idle time"
    log = (tmp_path / "server.log").read_text()
    assert "no call and no job for 0.02 minutes" in log and "stopped" in log


def test_a_server_that_fails_to_start_is_reported_with_its_log(port: int, tmp_path: Path):
    broken = tmp_path / "impasto-server"
    broken.write_text("#!/bin/sh\necho 'cannot load the model: the disk is full' >&2\nexit 1\n")
    broken.chmod(0o755)
    with pytest.raises(LaunchError) as caught:
        ensure_local_server(f"127.0.0.1:{port}", [str(broken)], impasto_answers, log_dir=tmp_path)
    message = str(caught.value)
    assert caught.value.reason == "exited"
    assert "stopped while starting" in message and "exit status 1" in message
    assert str(tmp_path / "server.log") in message
    assert message.endswith("cannot load the model: the disk is full")


def test_no_server_installed_says_so(port: int, tmp_path: Path):
    for command in ([str(tmp_path / "nowhere" / "impasto-server")], None):
        with pytest.raises(LaunchError) as caught:
            ensure_local_server(f"127.0.0.1:{port}", command, impasto_answers, log_dir=tmp_path)
        assert caught.value.reason == "not installed"
        assert "No Impasto server is installed on this computer" in str(caught.value)
        assert "--" not in str(caught.value)  # words for GIMP users, no command-line flags


def test_a_port_taken_by_another_program_is_named(port: int, command: list[str], tmp_path: Path):
    """Something answers there, but not as Impasto: no server is started, and the port is named."""
    other = http.server.HTTPServer(("127.0.0.1", port), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    try:
        with pytest.raises(LaunchError) as caught:
            ensure_local_server(f"127.0.0.1:{port}", command, impasto_answers, log_dir=tmp_path)
    finally:
        other.shutdown()
        other.server_close()
    assert caught.value.reason == "port taken"
    assert f"Another program is using port {port} on this computer" in str(caught.value)
    assert servers_on(port) == []


def test_a_server_that_wants_a_token_answers_and_none_is_started_beside_it():
    """The plug-in may know no token yet: the server's refusal of a missing token still says that an
    Impasto server answers there, so no second server is started."""
    with running_server(token="s3cret") as address:
        assert impasto_answers(address)
        assert ensure_local_server(address, None, impasto_answers) is None
    assert not impasto_answers(address)  # stopped: nothing answers


# Flatpak's own programs. flatpak-spawn --host asks Flatpak's session helper, on the session bus, to run a
# command outside the sandbox; the sandbox's part is only whether its D-Bus proxy lets that request
# through, and each test below plays one answer with a bus of its own: one on which the helper starts
# when asked, or one without it.
FLATPAK_SPAWN = "/usr/libexec/flatpak-xdg-utils/flatpak-spawn"
SESSION_HELPER = "/usr/libexec/flatpak-session-helper"


@pytest.fixture
def in_gimps_flatpak(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[[bool], None]:
    """Makes this process a plug-in in GIMP's Flatpak, with flatpak-spawn on its PATH as in the sandbox;
    `in_gimps_flatpak(allowed)` gives it a session bus of its own, on which Flatpak's session helper
    answers flatpak-spawn --host (allowed) or nothing does (GIMP's Flatpak without that permission)."""
    spawn = system_tool(FLATPAK_SPAWN, ["flatpak-xdg-utils"], required_in_ci=True)
    system_tool(SESSION_HELPER, ["flatpak"], required_in_ci=True)
    dbus_daemon = system_tool("dbus-daemon", ["dbus-daemon"], required_in_ci=True)
    marker = tmp_path / "flatpak-info"
    marker.write_text("[Application]\nname=org.gimp.GIMP\n")
    monkeypatch.setattr(launcher, "FLATPAK_INFO", marker)
    monkeypatch.setenv("PATH", f"{Path(spawn).parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FLATPAK_ID", "org.gimp.GIMP")
    daemons = []

    def bus(allowed: bool) -> None:
        config = tmp_path / "bus.conf"
        # The standard session bus starts the services it knows when called; this one knows none.
        config.write_text(
            '<busconfig><type>session</type><listen>unix:tmpdir=/tmp</listen><policy context="default">'
            '<allow send_destination="*" eavesdrop="true"/><allow eavesdrop="true"/><allow own="*"/>'
            "</policy></busconfig>"
        )
        which = ["--session"] if allowed else [f"--config-file={config}"]
        daemon = subprocess.Popen(
            [dbus_daemon, *which, "--nofork", "--print-address=1"], stdout=subprocess.PIPE, text=True
        )
        daemons.append(daemon)
        monkeypatch.setenv("DBUS_SESSION_BUS_ADDRESS", daemon.stdout.readline().strip())

    yield bus
    for daemon in daemons:
        daemon.terminate()
        daemon.wait(timeout=30)


def parent_name(pid: int) -> str:
    parent = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
    return Path(f"/proc/{parent}/comm").read_text().strip()


def test_in_gimps_flatpak_the_server_is_started_outside_the_sandbox(
    port: int, command: list[str], tmp_path: Path, in_gimps_flatpak
):
    """The sandbox's /usr is its runtime's, where the server's virtual environment cannot run: the plug-in
    asks Flatpak to start the server on the host (flatpak-spawn --host), and the server's output reaches
    the log through it."""
    in_gimps_flatpak(allowed=True)
    spawn = ensure_local_server(f"127.0.0.1:{port}", command, impasto_answers, log_dir=tmp_path)
    assert spawn in servers_on(port)  # flatpak-spawn names the server's command line, and waits for it
    (server,) = [pid for pid in servers_on(port) if pid != spawn]
    assert parent_name(server) == "flatpak-session"  # Flatpak's helper started it, not the plug-in
    log = (tmp_path / "server.log").read_text()
    assert f"starting: flatpak-spawn --host --directory={Path.home()} {' '.join(command)}" in log
    assert "listening on" in log
    with Client(f"127.0.0.1:{port}", timeout=10) as client:
        assert client.info().idle_exit_minutes == 20


def test_a_flatpak_not_allowed_out_of_its_sandbox_says_how_to_allow_it(
    port: int, command: list[str], tmp_path: Path, in_gimps_flatpak
):
    in_gimps_flatpak(allowed=False)
    with pytest.raises(LaunchError) as caught:
        ensure_local_server(f"127.0.0.1:{port}", command, impasto_answers, log_dir=tmp_path)
    assert caught.value.reason == "sandboxed"
    message = str(caught.value)
    assert message.startswith("GIMP runs in Flatpak's sandbox, and Flatpak did not let it start the Impasto")
    assert "(Portal call failed: The name org.freedesktop.Flatpak was not provided" in message
    assert "run once: flatpak override --user --talk-name=org.freedesktop.Flatpak org.gimp.GIMP" in message
    assert servers_on(port) == []


def test_in_gimps_flatpak_a_server_missing_outside_the_sandbox_is_not_installed(
    port: int, tmp_path: Path, in_gimps_flatpak
):
    """The sandbox cannot see every folder of the host, so only Flatpak can tell that the program is not
    there: the same sentence as outside a sandbox, with Flatpak's words."""
    in_gimps_flatpak(allowed=True)
    missing = tmp_path / "nowhere" / "impasto-server"
    with pytest.raises(LaunchError) as caught:
        ensure_local_server(f"127.0.0.1:{port}", [str(missing)], impasto_answers, log_dir=tmp_path)
    assert caught.value.reason == "not installed"
    message = str(caught.value)
    assert message.startswith(f"No Impasto server is installed on this computer (looked for {missing}: ")
    assert "Failed to execute child process" in message and "flatpak override" not in message
