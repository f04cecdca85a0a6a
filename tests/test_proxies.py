"""A studio's set-up, run for real: nginx and HAProxy from Debian's packages, each in front of two
impasto-servers on loopback, with the configurations in deploy/ (only their ports replaced).

Where the proxies cannot be installed (apt-get, as root) these tests skip, and fail under CI=true.
"""

from __future__ import annotations

import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from helpers import ServerProcess, free_port, system_tool
from impasto.client import Client
from impasto.protocol import NO_PREVIEWS, Image, ImpastoError, Kind, Queued, Settings, Started, StyleChoice
from wire import noise

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
PROXY_PORT, SERVER_PORTS = "50051", ("50061", "50062")
QUICK = Settings(size=32, iterations=10, preview_seconds=NO_PREVIEWS)
USERS = 12


@dataclass
class Studio:
    """A proxy at `address` in front of two impasto-servers."""

    name: str
    address: str
    servers: list[ServerProcess]
    proxy: subprocess.Popen
    proxy_log: Path

    def served(self) -> list[int]:
        """Jobs each server has finished."""
        return [server.log().count("outcome=ok") for server in self.servers]


@dataclass
class Outcome:
    admitted: bool = False  # queued or started
    result: Image | None = None
    error: ImpastoError | None = None
    events: list = field(default_factory=list)


def content() -> Image:
    return Image(noise(32, 32, 4).tobytes(), 32, 32)


def batch(address: str, users: int, settings: Settings = QUICK, started: threading.Barrier | None = None):
    """`users` clients at once, each its own Client (its own id), all over the proxy's one address."""
    outcomes = [Outcome() for _ in range(users)]

    def user(outcome: Outcome) -> None:
        try:
            with Client(address, timeout=30) as client:
                job = client.stylize(content(), [StyleChoice(preset_id="udnie")], settings)
                for event in job.events():
                    if isinstance(event, Queued | Started) and not outcome.admitted:
                        outcome.admitted = True
                        if started is not None:
                            started.wait(60)
                outcome.result = job.result
        except ImpastoError as error:
            outcome.error = error
            if started is not None and not outcome.admitted:
                started.abort()

    threads = [threading.Thread(target=user, args=(o,), daemon=True) for o in outcomes]
    for thread in threads:
        thread.start()
    return outcomes, threads


def run_batch(address: str, users: int = USERS, settings: Settings = QUICK) -> list[Outcome]:
    outcomes, threads = batch(address, users, settings)
    for thread in threads:
        thread.join(180)
    return outcomes


def wait_for_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on port {port}")


def configured(text: str, proxy_port: int, server_ports: list[int]) -> str:
    text = text.replace(f"127.0.0.1:{PROXY_PORT}", f"127.0.0.1:{proxy_port}")
    for placeholder, port in zip(SERVER_PORTS, server_ports, strict=True):
        text = text.replace(f"127.0.0.1:{placeholder}", f"127.0.0.1:{port}")
    return text


def start_nginx(folder: Path, proxy_port: int, server_ports: list[int]) -> tuple[subprocess.Popen, Path]:
    binary = system_tool("nginx", ["nginx-light"], required_in_ci=True)
    site = configured((REPO / "deploy" / "nginx.conf").read_text(), proxy_port, server_ports)
    (folder / "impasto.conf").write_text(site)
    temp = " ".join(f"{kind}_temp_path {folder}/{kind};" for kind in ("client_body", "proxy", "fastcgi"))
    (folder / "nginx.conf").write_text(
        f"daemon off;\npid {folder}/nginx.pid;\nerror_log {folder}/error.log info;\nevents {{}}\n"
        f"http {{\n access_log {folder}/access.log;\n {temp}\n include {folder}/impasto.conf;\n}}\n"
    )
    log = folder / "error.log"
    with open(folder / "nginx.out", "wb") as output:  # the child keeps its own handle
        process = subprocess.Popen(
            [binary, "-p", str(folder), "-c", str(folder / "nginx.conf")], stdout=output, stderr=output
        )
    return process, log


def start_haproxy(folder: Path, proxy_port: int, server_ports: list[int]) -> tuple[subprocess.Popen, Path]:
    binary = system_tool("haproxy", ["haproxy"], required_in_ci=True)
    config = configured((REPO / "deploy" / "haproxy.cfg").read_text(), proxy_port, server_ports)
    (folder / "haproxy.cfg").write_text(config)
    log = folder / "haproxy.log"
    with open(log, "wb") as output:  # its log goes to stderr; the child keeps its own handle
        process = subprocess.Popen([binary, "-db", "-f", str(folder / "haproxy.cfg")], stderr=output)
    return process, log


@pytest.fixture(scope="module", params=["nginx", "haproxy"])
def studio(
    request: pytest.FixtureRequest, images: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Studio]:
    name = request.param
    folder = tmp_path_factory.mktemp(name)
    ports = [free_port(), free_port()]
    servers = [
        ServerProcess(
            folder / f"server-{n}.log",
            "--port",
            str(port),
            "--grace-seconds",
            "10",
            "--max-queue",  # room for every user on one server, when the other has stopped
            str(USERS),
            "--styles-dir",
            str(images / "styles"),
        )
        for n, port in enumerate(ports)
    ]
    proxy = None
    try:
        for server in servers:
            assert server.wait_for_log("impasto-server listening on", 120), server.log()[-2000:]
        proxy_port = free_port()
        start = start_nginx if name == "nginx" else start_haproxy
        proxy, proxy_log = start(folder, proxy_port, ports)
        wait_for_port(proxy_port)
        address = f"127.0.0.1:{proxy_port}"
        with Client(address) as client:
            client.info()
        yield Studio(name, address, servers, proxy, proxy_log)
    finally:
        if proxy is not None:
            proxy.terminate()
            proxy.wait(30)
        for server in servers:
            server.stop()


def test_twelve_users_through_one_proxy_are_all_served_on_both_servers(studio: Studio):
    before = studio.served()
    outcomes = run_batch(studio.address)
    assert all(o.admitted and o.result is not None for o in outcomes), [o.error for o in outcomes if o.error]
    served = [after - earlier for after, earlier in zip(studio.served(), before, strict=True)]
    assert sum(served) == USERS and min(served) >= 2, served


def test_a_refusal_after_the_upload_reaches_the_client_with_its_words(studio: Studio):
    garbage = Image(b"this is not an image at all" * 40, encoded=True)
    with Client(studio.address) as client, pytest.raises(ImpastoError) as caught:
        list(client.stylize(garbage, [StyleChoice(preset_id="udnie")], QUICK).events())
    assert caught.value.kind is Kind.INVALID, caught.value
    assert "PNG" in caught.value.detail, caught.value  # the server's own sentence


def test_a_refusal_during_the_upload_reaches_the_client_with_its_words(studio: Studio):
    big = Image(noise(1024, 1024, 4).tobytes(), 1024, 1024)  # 4 MiB: still uploading when refused
    with Client(studio.address) as client, pytest.raises(ImpastoError) as caught:
        list(client.stylize(big, [StyleChoice(preset_id="no-such-style")], QUICK).events())
    assert caught.value.kind is Kind.NOT_FOUND and "no-such-style" in caught.value.detail, caught.value


def test_a_server_stopped_mid_batch(studio: Studio):
    """Its users are told it shut down; the next batch is all served by the other."""
    stopping, other = studio.servers
    slow = Settings(size=32, iterations=150, preview_seconds=NO_PREVIEWS)
    admitted = threading.Barrier(USERS + 1)
    outcomes, threads = batch(studio.address, USERS, slow, started=admitted)
    admitted.wait(120)  # every user's job is queued or running, on one server or the other
    stopping.process.terminate()
    if studio.name == "haproxy":  # NOT_SERVING takes it out of the rotation while it still runs its job
        down = re.compile(r"impasto_servers/gpu1 is DOWN.*")
        deadline = time.monotonic() + 30
        while not down.search(studio.proxy_log.read_text()) and time.monotonic() < deadline:
            time.sleep(0.1)
        reason = down.search(studio.proxy_log.read_text())
        # Layer 7: it answered, NOT_SERVING (a stopped server fails at layer 4, the connection).
        assert reason and "Layer7" in reason[0], studio.proxy_log.read_text()[-2000:]
    for thread in threads:
        thread.join(180)
    told = [o.error for o in outcomes if o.error is not None]
    assert told, "no user's job was on the stopped server"
    for error in told:
        assert error.kind is Kind.UNAVAILABLE and "shutting down" in error.sentence(), error
    assert all(o.result is not None for o in outcomes if o.error is None)
    assert stopping.stop() == 0
    before = other.log().count("outcome=ok")
    after_stop = run_batch(studio.address)
    assert all(o.result is not None for o in after_stop), [o.error for o in after_stop if o.error]
    assert other.log().count("outcome=ok") - before == USERS
