"""Starts this machine's impasto-server when a client finds none answering at the local address.

Standard library only: this module is vendored into the GIMP plug-in, which runs in GIMP's own Python
on Windows, macOS and Linux. The server it starts outlives the caller (GIMP starts a plug-in process
per call and kills it on Cancel): detached, in a session or process group of its own, its output
appended to a log file in the user's cache folder, ending itself after `idle_minutes` unused. However
many callers start at once, one server starts: a lock file decides, and the others wait for the winner
to answer.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

# impasto-server's exit status when its port is taken (it also says so in its log).
EXIT_PORT_IN_USE = 3
START_TIMEOUT_SECONDS = 120.0  # loading the model and a first CUDA start take a while
# Something listens but does not answer as Impasto: a server that is binding or closing settles in this.
PORT_SETTLE_SECONDS = 3.0
POLL_SECONDS = 0.1
PROBE_TIMEOUT_SECONDS = 2.0
LOG_NAME = "server.log"
LOG_LIMIT_BYTES = 1 << 20  # beyond this the log becomes server.log.1 at the next start
LOG_TAIL_LINES = 12
IDLE_EXIT_MINUTES = 20.0  # a started server's --idle-exit unless the caller says otherwise
# Present in every Flatpak sandbox, such as Flathub's GIMP runs its plug-ins in.
FLATPAK_INFO = Path("/.flatpak-info")


class LaunchError(Exception):
    """The local server could not be started or reached; the message is a sentence for the user.

    `reason` lets a client add its own advice: "not installed", "exited", "port taken", "no answer",
    "sandboxed" (GIMP's Flatpak may not start programs outside its sandbox)."""

    def __init__(self, message: str, reason: str, log_path: Path | None = None):
        super().__init__(message)
        self.reason = reason
        self.log_path = log_path


def default_log_dir() -> Path:
    """Where the server's log and the start lock live: the user's cache (or logs) folder."""
    if sys.platform == "win32":
        base = os.environ.get("LOCALAPPDATA") or str(Path.home() / "AppData" / "Local")
        return Path(base) / "impasto" / "Logs"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Logs" / "impasto"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "impasto"


def ensure_local_server(
    address: str,
    command: Sequence[str] | None,
    probe: Callable[[str], bool],
    log_dir: Path | None = None,
    idle_minutes: float = IDLE_EXIT_MINUTES,
    timeout: float = START_TIMEOUT_SECONDS,
    starting: Callable[[], None] | None = None,
) -> int | None:
    """Makes sure an Impasto server answers at `address` (host:port, plaintext, this machine).

    If one answers, returns None at once. Otherwise starts `command` (the server's program and any
    arguments of its own) with --host, --port and --idle-exit, detached, and returns its process id once
    it answers (in a Flatpak sandbox: of the flatpak-spawn that started it outside); None if another
    caller's server answered first. `probe(address)` says whether an Impasto server answers there (any
    reply from one counts, a refused token too): the client's `impasto_answers`. `starting()` is called
    once nothing answered, before this caller starts the server or waits for another's start: a client's
    cue to say so. Raises LaunchError.
    """
    answers = probe
    if answers(address):
        return None
    if starting is not None:
        starting()
    host, port = _split_address(address)
    folder = Path(log_dir) if log_dir is not None else default_log_dir()
    folder.mkdir(parents=True, exist_ok=True)
    log_path = folder / LOG_NAME
    deadline = time.monotonic() + timeout
    lock = _StartLock(folder / f"server-{port}.lock")
    try:
        while not lock.acquire():
            if answers(address):
                return None  # the caller holding the lock started it
            if time.monotonic() > deadline:
                raise LaunchError(
                    f"The Impasto server being started at the same moment by another window or program "
                    f"did not answer within {timeout:.0f} seconds; its log is {log_path}.",
                    "no answer",
                    log_path,
                )
            time.sleep(POLL_SECONDS)
        if answers(address) or _wait_for_port(host, port, address, answers):
            return None
        return _start(address, host, port, list(command or []), idle_minutes, log_path, deadline, answers)
    finally:
        lock.release()


def _split_address(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]"), int(port)


def _wait_for_port(host: str, port: int, address: str, answers: Callable[[str], bool]) -> bool:
    """True if an Impasto server answers after all; False if the port is free to start one. A port that
    stays taken by something else raises LaunchError."""
    settled = time.monotonic() + PORT_SETTLE_SECONDS
    while _listening(host, port):
        if answers(address):
            return True
        if time.monotonic() > settled:
            raise _port_taken(port, None)
        time.sleep(POLL_SECONDS)
    return False


def _start(
    address: str,
    host: str,
    port: int,
    command: list[str],
    idle_minutes: float,
    log_path: Path,
    deadline: float,
    answers: Callable[[str], bool],
) -> int | None:
    sandboxed = FLATPAK_INFO.exists()
    # In a sandbox the server's program is a path on the host, which the sandbox may not show.
    if not command or not (sandboxed or _installed(command[0])):
        raise _not_installed(f" (looked for {command[0]})" if command else "")
    argv = [*command, "--host", host, "--port", str(port), "--idle-exit", f"{idle_minutes:g}"]
    if sandboxed:
        # The sandbox's /usr is its runtime's: the server's virtual environment works only on the host.
        # flatpak-spawn exits with the server's own status, so the checks below hold through it.
        argv = ["flatpak-spawn", "--host", f"--directory={Path.home()}", *argv]
    _rotate(log_path)
    with open(log_path, "ab") as log:
        log.write(f"\n--- {time.strftime('%Y-%m-%d %H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        log.flush()
        start_of_run = log.tell()
        try:
            process = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=_server_environment(),
                **_detached(),
            )
        except OSError as error:
            raise LaunchError(
                f"The Impasto server {command[0]} could not be started ({error.strerror or error}).",
                "not installed",
            ) from error
    while not answers(address):
        code = process.poll()
        if code == EXIT_PORT_IN_USE:
            # Another server took the port first (one whose starter was killed before it answered),
            # or another program did.
            if _wait_for_port(host, port, address, answers):
                return None
            raise _port_taken(port, log_path)
        if code is not None:
            said = _tail(log_path, start_of_run)
            refusal = [line for line in said.splitlines() if line.startswith("Portal call failed")]
            if sandboxed and refusal:  # flatpak-spawn's words: the server never ran
                raise _not_started_outside(refusal[-1], command[0], log_path)
            raise LaunchError(
                f"The Impasto server stopped while starting (exit status {code}). The last lines of its "
                f"log, {log_path}:\n{said}",
                "exited",
                log_path,
            )
        if time.monotonic() > deadline:
            raise LaunchError(
                f"The Impasto server was started but has not answered yet; it may still be loading. Try "
                f"again in a minute; its log is {log_path}.",
                "no answer",
                log_path,
            )
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(POLL_SECONDS)  # returns early if it exits
    return process.pid if process.poll() is None else None  # else another server won the port


def _port_taken(port: int, log_path: Path | None) -> LaunchError:
    log = f" Its log: {log_path}." if log_path else ""
    return LaunchError(
        f"Another program is using port {port} on this computer, so the Impasto server cannot listen "
        f"there; close that program, or use an Impasto server at another address.{log}",
        "port taken",
        log_path,
    )


def _not_installed(where: str, log_path: Path | None = None) -> LaunchError:
    return LaunchError(
        f"No Impasto server is installed on this computer{where}, so none could be started; install "
        "Impasto's server, or name the one to start.",
        "not installed",
        log_path,
    )


def _not_started_outside(said: str, program: str, log_path: Path) -> LaunchError:
    """flatpak-spawn --host failed before the server ran (`said` is its line): the app may not run
    commands outside its sandbox, or the program is not there."""
    if "org.freedesktop.Flatpak" not in said:  # "Failed to execute child process “…” (No such file…)"
        return _not_installed(f" (looked for {program}: {said})", log_path)
    app = os.environ.get("FLATPAK_ID") or "org.gimp.GIMP"
    return LaunchError(
        f"GIMP runs in Flatpak's sandbox, and Flatpak did not let it start the Impasto server outside it "
        f"({said}). To allow it, run once: flatpak override --user --talk-name=org.freedesktop.Flatpak "
        f"{app}; then restart GIMP.",
        "sandboxed",
        log_path,
    )


def _installed(program: str) -> bool:
    if os.path.dirname(program):
        return os.path.isfile(program)
    return shutil.which(program) is not None


def _server_environment() -> dict[str, str]:
    # GIMP points these at its own Python; the server's virtual environment must not see them.
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


def _detached() -> dict:
    """Popen arguments that let the server outlive its starter and its starter's console or session."""
    if sys.platform == "win32":
        flags = subprocess.DETACHED_PROCESS | subprocess.CREATE_NEW_PROCESS_GROUP
        return {"creationflags": flags}
    return {"start_new_session": True}


def _rotate(log_path: Path) -> None:
    try:
        if log_path.stat().st_size > LOG_LIMIT_BYTES:
            os.replace(log_path, log_path.with_name(log_path.name + ".1"))
    except OSError:
        pass  # no log yet, or one in use on Windows: append to it


def _tail(log_path: Path, offset: int) -> str:
    """The last lines the server wrote to its log since `offset`."""
    with open(log_path, "rb") as log:
        log.seek(offset)
        lines = log.read().decode("utf-8", "replace").strip().splitlines()
    return "\n".join(lines[-LOG_TAIL_LINES:]) or "(it wrote nothing)"


def _listening(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_SECONDS):
            return True
    except OSError:
        return False


class _StartLock:
    """One starter per port among all processes of this user: an OS lock on a file, which the OS lets go
    when its holder dies (GIMP kills a plug-in on Cancel), so that no lock is ever left stale."""

    def __init__(self, path: Path):
        self._file = open(path, "a+b")  # noqa: SIM115 - held until release()
        self._held = False

    def acquire(self) -> bool:
        """Takes the lock if it is free; never blocks."""
        try:
            if sys.platform == "win32":
                import msvcrt

                self._file.seek(0)
                msvcrt.locking(self._file.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        self._held = True
        return True

    def release(self) -> None:
        if self._held and sys.platform == "win32":
            import msvcrt

            self._file.seek(0)
            msvcrt.locking(self._file.fileno(), msvcrt.LK_UNLCK, 1)
        self._held = False
        self._file.close()
