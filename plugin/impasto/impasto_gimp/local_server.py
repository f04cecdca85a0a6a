"""The local server the plug-in starts itself: the one impasto-server.json in GIMP's folder names.

install.sh writes that file where it installs the plug-in; a user may write it by hand (README: Which
server the plug-in starts):

    {"command": ["/path/to/impasto-server", "--device", "cuda:1"],
     "address": "127.0.0.1:50051", "idle_exit_minutes": 20}

Only "command" is needed: the program and any arguments of its own (the launcher adds --host, --port
and --idle-exit). "address" is where the plug-in looks for that server (127.0.0.1:50051 unless it says
otherwise), "idle_exit_minutes" how long it stays up unused (20 unless it says otherwise).

When the address a run or the dialog would use is exactly that address and nothing answers there, the
launcher (vendored with the client) starts the server, detached, once however many GIMP windows ask,
and waits until it answers. Any other address, this computer's included, is never started.
"""

import dataclasses
import functools
import json
import os
from collections.abc import Callable

from gi.repository import Gimp

from .remote import (
    DEFAULT_ADDRESS,
    IDLE_EXIT_MINUTES,
    LaunchError,
    ensure_local_server,
    impasto_answers,
    parse_address,
)

RECORD_NAME = "impasto-server.json"
STARTING = "Starting the local Impasto server…"
README_SECTION = "Impasto's README, “Which server the plug-in starts”"


@functools.cache  # read once on the main thread: worker threads make no libgimp calls
def record_file() -> str:
    return os.path.join(Gimp.directory(), RECORD_NAME)


@dataclasses.dataclass(frozen=True)
class Recorded:
    """What impasto-server.json says, each field checked; `problem` says what is wrong with the file (a
    sentence), and is told only when the server has to be started."""

    command: list[str] | None = None
    address: str = DEFAULT_ADDRESS
    idle_minutes: float = IDLE_EXIT_MINUTES
    problem: str | None = None


def recorded() -> Recorded:
    path = record_file()
    try:
        with open(path, encoding="utf-8-sig") as file:  # -sig: Notepad starts its UTF-8 with a BOM
            record = json.load(file)
    except FileNotFoundError:
        return Recorded()
    except (OSError, ValueError) as error:
        problem = f"{path} cannot be read as JSON ({error})"
        # A Windows path typed by hand: "C:\Users\…" is no JSON string.
        if isinstance(error, json.JSONDecodeError) and error.msg == r"Invalid \escape":
            problem += r"; in a path such as C:\Users, write each \ as \\ or /"
        return Recorded(problem=problem)
    if not isinstance(record, dict):
        return Recorded(problem=f"{path} holds no JSON object")
    problems = []
    command = record.get("command")
    if not (isinstance(command, list) and command and all(isinstance(w, str) and w for w in command)):
        problems.append('its "command" must be a list: the server\'s program, then any arguments of its own')
        command = None
    address = record.get("address", DEFAULT_ADDRESS)
    if not _local_plaintext(address):
        problems.append(f'its "address" must be this computer\'s host:port, such as {DEFAULT_ADDRESS}')
        address = DEFAULT_ADDRESS
    idle = record.get("idle_exit_minutes", IDLE_EXIT_MINUTES)
    if isinstance(idle, bool) or not isinstance(idle, (int, float)) or idle <= 0:
        problems.append('its "idle_exit_minutes" must be a number of minutes above 0')
        idle = IDLE_EXIT_MINUTES
    problem = f"{path} is not usable: {'; '.join(problems)}" if problems else None
    return Recorded(None if problems else command, address.strip(), float(idle), problem)


def _local_plaintext(address: object) -> bool:
    if not isinstance(address, str) or "," in address or ":" not in address:
        return False
    target = parse_address(address.strip())
    return target.loopback and not target.tls


def local_address() -> str:
    """The address the plug-in uses when nothing else is remembered or set: its own server's."""
    return recorded().address


# What a GIMP user can do, for each of the launcher's reasons, after the launcher's own sentence.
ADVICE = {
    "not installed": "To install one, run install.sh from Impasto's folder: it installs the server and "
    "records it for the plug-in in {record}. To use a server installed elsewhere, name its program in "
    "that file ({readme}). Or enter the address of a running Impasto server in the Server field.",
    "port taken": "Enter another server's address in the Server field, or give this one another port: the "
    "“address” in {record}.",
    "sandboxed": "(install.sh does that when it installs the plug-in into GIMP's Flatpak.) Or enter the "
    "address of a running Impasto server in the Server field.",
}


def start_if_needed(address: str, say: Callable[[str], None]) -> None:
    """Makes sure the plug-in's own server answers when `address` is its address: when nothing answers
    there, calls `say(STARTING)`, starts the server and returns once it answers. Returns at once for
    any other address (a dead one stays the connection's error, naming it). Raises LaunchError with a
    sentence in GIMP's words."""
    server = recorded()
    if address != server.address:
        return
    try:
        ensure_local_server(
            address,
            server.command,
            impasto_answers,
            idle_minutes=server.idle_minutes,
            starting=lambda: say(STARTING),
        )
    except LaunchError as error:
        told = str(error)
        if error.reason == "not installed" and server.problem:
            told = f"The plug-in cannot start its Impasto server: {server.problem}."
        advice = ADVICE.get(error.reason, "").format(record=record_file(), readme=README_SECTION)
        raise LaunchError(f"{told} {advice}".strip(), error.reason, error.log_path) from error
