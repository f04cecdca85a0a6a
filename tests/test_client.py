"""The network client runs where GIMP's Windows Python does: no compiled module outside the standard library.

GIMP 3 for Windows runs plug-ins with an MSYS2/MinGW-built Python that cannot load PyPI's compiled
wheels. The closest this machine gets: an interpreter in which importing any compiled module that is
not part of the standard library raises ImportError. The whole client runs there against a real
server with TLS and a token.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import running_server, self_signed, start_long_job

# Runs first in the child interpreter: from here on, a compiled module outside the standard library
# cannot be imported, exactly as if its wheel did not fit the interpreter.
FORBID_COMPILED = """
import importlib.machinery, sys
_load = importlib.machinery.ExtensionFileLoader.create_module
def _guarded(self, spec):
    origin = spec.origin or ""
    if not origin.startswith(sys.base_prefix) or "-packages" in origin:
        raise ImportError(f"compiled module {spec.name} is forbidden here ({origin})")
    return _load(self, spec)
importlib.machinery.ExtensionFileLoader.create_module = _guarded
"""

CLIENT_RUN = """
import json
from impasto.client import Client
from impasto.protocol import NO_PREVIEWS, Image, ImpastoError, Progress, Settings, StyleChoice
address, ca, token, content = sys.argv[1:5]
quick = Settings(size=32, iterations=2, preview_seconds=NO_PREVIEWS)
out = {}
with Client(address, tls_ca=ca, token=token) as client:
    info = client.info()
    out["info"] = [info.weights, info.device.kind]
    presets = client.styles()
    out["presets"] = len(presets)
    out["thumbnail"] = client.thumbnail("udnie")[:8].hex()
    job = client.stylize(Image.from_file(content), [StyleChoice(preset_id="udnie")], quick)
    out["events"] = sorted({type(event).__name__ for event in job.events()})
    out["result"] = [job.result.width, job.result.height, job.result.encoded]
    long_job = Settings(size=64, iterations=5000, preview_seconds=NO_PREVIEWS)
    image = Image.from_file(content)
    job = client.stylize(image, [StyleChoice(upload=0)], long_job, [image])
    events = job.events()
    for event in events:
        if isinstance(event, Progress):
            break
    job.cancel()
    try:
        list(events)
        out["cancelled"] = False
    except ImpastoError as error:
        out["cancelled"] = error.cancelled
    import time
    deadline = time.monotonic() + 30  # the server stops the job within an iteration of noticing
    while client.info().running_jobs and time.monotonic() < deadline:
        time.sleep(0.05)
    out["idle"] = client.info().running_jobs
try:
    with Client(address, tls_ca=ca, token="wrong") as client:
        client.info()
except ImpastoError as error:
    out["wrong_token"] = str(error)
out["compiled"] = sorted(
    name for name, module in sys.modules.items()
    if str(getattr(module, "__file__", "")).endswith((".so", ".pyd", ".dylib", ".dll"))
    and "-packages" in str(module.__file__)
)
out["grpc_imported"] = "grpc" in sys.modules
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def tls_server(images: Path, tmp_path_factory: pytest.TempPathFactory):
    cert, key = self_signed(tmp_path_factory.mktemp("tls"))
    flags = ("--styles-dir", str(images / "styles"), "--tls-cert", str(cert), "--tls-key", str(key))
    with running_server(*flags, token="s3cret") as address:
        yield f"https://localhost:{address.rsplit(':', 1)[1]}", cert


def test_the_whole_client_runs_with_compiled_imports_forbidden(tls_server, images: Path):
    address, cert = tls_server
    content = images / "content" / "camera.png"
    result = subprocess.run(
        [sys.executable, "-c", FORBID_COMPILED + CLIENT_RUN, address, str(cert), "s3cret", str(content)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["compiled"] == [] and not out["grpc_imported"]
    assert out["info"] == ["vgg19-original", "cpu"] and out["presets"] >= 10
    assert out["thumbnail"] == "89504e470d0a1a0a"  # a PNG
    assert out["events"] == ["Progress", "Queued", "Result", "Started"]
    assert out["result"][2] is True and out["result"][:2] == [256, 256]
    assert out["cancelled"] is True and out["idle"] == 0
    assert "did not accept the token" in out["wrong_token"]


def test_the_guard_really_forbids_compiled_modules():
    """The check above means something: under the guard, a compiled wheel's module cannot load."""
    script = FORBID_COMPILED + "import numpy"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "compiled module" in result.stderr and "forbidden" in result.stderr


def test_of_several_servers_the_least_busy_that_answers(images: Path):
    from impasto.client import Client

    with running_server("--styles-dir", str(images / "styles")) as busy, running_server() as free:
        down = "127.0.0.1:9"  # nothing listens there
        with Client(busy) as client:
            job, _ = start_long_job(client, images / "content" / "camera.png")
            with Client(f"{down},{busy},{free}") as chosen:
                assert chosen.address == free
            job.cancel()


PAIRED_RUN = """
import json
from impasto.client import Client
print(json.dumps({"weights": Client(sys.argv[1]).info().weights, "grpc": "grpc" in sys.modules}))
"""


def test_a_pairing_string_connects_with_the_standard_library_alone(tls_server):
    from impasto.protocol import pairing_string
    from impasto.service.pairing import fingerprint_of

    address, cert = tls_server
    string = pairing_string("127.0.0.1", int(address.rsplit(":", 1)[1]), "s3cret", fingerprint_of(cert))
    result = subprocess.run(
        [sys.executable, "-c", FORBID_COMPILED + PAIRED_RUN, string],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout) == {"weights": "vgg19-original", "grpc": False}


class RecordingTLSServer:
    """A TLS server with a certificate of its own that keeps every byte a client sends it."""

    def __init__(self, cert: Path, key: Path):
        import socket
        import ssl
        import threading

        self.received: list[bytes] = []
        self.connections = 0
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        context.set_alpn_protocols(["h2"])
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._tls = context
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import ssl

        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            self.connections += 1
            try:
                with self._tls.wrap_socket(raw, server_side=True) as connection:
                    connection.settimeout(10)
                    while data := connection.recv(65536):
                        self.received.append(data)
            except (OSError, ssl.SSLError):
                continue

    def close(self) -> None:
        self._listener.close()


def test_a_server_with_another_certificate_gets_no_token(tmp_path: Path):
    from impasto.client import Client
    from impasto.protocol import ImpastoError, Kind, pairing_string
    from impasto.service.pairing import fingerprint_of

    (tmp_path / "paired").mkdir()
    (tmp_path / "other").mkdir()
    paired_cert, _ = self_signed(tmp_path / "paired")
    other_cert, other_key = self_signed(tmp_path / "other")

    impostor = RecordingTLSServer(other_cert, other_key)
    try:
        string = pairing_string("127.0.0.1", impostor.port, "s3cret-token", fingerprint_of(paired_cert))
        with pytest.raises(ImpastoError) as caught:
            Client(string)
        assert caught.value.kind is Kind.NOT_PAIRED
        assert "not the one this was paired with" in caught.value.sentence("gimp")
        assert "Server field" in caught.value.sentence("gimp")
        assert impostor.connections == 1  # the certificate was fetched, and then nothing
        assert b"".join(impostor.received) == b""
    finally:
        impostor.close()
