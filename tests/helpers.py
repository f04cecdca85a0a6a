"""Helpers shared by test modules (fixtures live in conftest.py)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from unittest import mock

import impasto.service.main
import torch
from impasto.service.main import build_parser, start


def gradient_image(height: int, width: int, seed: int = 0) -> torch.Tensor:
    """A smooth, colourful test image with some texture, (1, 3, H, W) in [0, 1]."""
    generator = torch.Generator().manual_seed(seed)
    ys = torch.linspace(0, 1, height).view(1, 1, height, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, 1, width)
    base = torch.cat(
        [
            ys.expand(1, 1, height, width),
            xs.expand(1, 1, height, width),
            (1 - ys * xs).expand(1, 1, height, width),
        ],
        dim=1,
    )
    return (0.8 * base + 0.2 * torch.rand(1, 3, height, width, generator=generator)).clamp(0, 1)


def start_server(
    *flags: str, token: str | None = None, full_size: bool = True
) -> tuple[str, Callable[[], None]]:
    """An impasto-server in this process on an ephemeral loopback port: (address, shutdown).
    `shutdown()` is what SIGTERM does; it returns once the server has stopped. `full_size=False`: its
    jobs Limits refuse full size and its ServerInfo says so, as an older server's does by leaving it out."""
    args = build_parser().parse_args(["--port", "0", "--device", "cpu", *flags])
    if full_size:
        port, shutdown = start(args, token)
    else:
        limits_from = impasto.service.main.limits_from
        older = mock.patch.object(
            impasto.service.main, "limits_from", lambda *a: replace(limits_from(*a), full_size=False)
        )
        with older:
            port, shutdown = start(args, token)
    return f"127.0.0.1:{port}", shutdown


@contextmanager
def running_server(*flags: str, token: str | None = None, full_size: bool = True) -> Iterator[str]:
    """An impasto-server in this process on an ephemeral loopback port; yields its address."""
    address, shutdown = start_server(*flags, token=token, full_size=full_size)
    try:
        yield address
    finally:
        shutdown()


def interrupt_stylize(*args: str) -> tuple[int, str]:
    """Runs `impasto stylize ARGS`, presses Ctrl-C once its progress shows; returns (exit code, stderr)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "impasto.cli", "stylize", *args], stderr=subprocess.PIPE
    )
    stderr = bytearray()
    while b"scale 1/" not in stderr:
        chunk = process.stderr.read1(4096)
        assert chunk, f"the CLI ended before the job ran: {stderr.decode()}"
        stderr.extend(chunk)
    process.send_signal(signal.SIGINT)
    code = process.wait(timeout=30)
    return code, (stderr + process.stderr.read()).decode()


def self_signed(folder: Path) -> tuple[Path, Path]:
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def start_long_job(client, content_file: Path):
    """A job too long to finish on its own (size 64, 5000 iterations), once it is running: (job, events)."""
    from impasto.protocol import NO_PREVIEWS, Image, Progress, Settings, StyleChoice

    job = client.stylize(
        Image.from_file(content_file),
        [StyleChoice(preset_id="udnie")],
        Settings(size=64, iterations=5000, preview_seconds=NO_PREVIEWS),
    )
    events = job.events()
    while not isinstance(next(events), Progress):
        pass
    return job, events


def free_port() -> int:
    """A port nothing listens on now, on every interface (for a server that must keep its port)."""
    with socket.socket(socket.AF_INET6 if socket.has_ipv6 else socket.AF_INET) as probe:
        probe.bind(("", 0))
        return probe.getsockname()[1]


def servers_on(port: int) -> list[int]:
    """The process ids of the impasto-servers told to listen on `port` (Linux: from /proc; also those
    running in a chroot)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(b"impasto-server" in word for word in argv) and str(port).encode() in argv:
            found.append(int(entry.name))
    return found


def gone(pid: int) -> bool:
    try:
        if os.waitpid(pid, os.WNOHANG)[0]:  # a server this process started, now ended
            return True
    except ChildProcessError:
        pass  # started by another process, or already reaped
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def wait_until_gone(pid: int, timeout: float) -> bool:
    """Polls until the process has ended or `timeout` passes: a guard, not a sleep."""
    deadline = time.monotonic() + timeout
    while not gone(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def kill_servers_on(port: int) -> None:
    """Ends every impasto-server told to listen on `port`: a test's cleanup."""
    for pid in servers_on(port):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_until_gone(pid, 30)


def system_tool(binary: str, packages: list[str], required_in_ci: bool) -> str:
    """The path of `binary` (a name on the PATH or in /usr/sbin, or a full path), installed from Debian's
    `packages` with apt-get where it is missing (as root). Where it cannot be had the test skips with the
    reason, or fails under CI=true if `required_in_ci`."""
    import os
    import shutil

    def find() -> str | None:
        if os.path.isabs(binary):
            return binary if os.access(binary, os.X_OK) else None
        return shutil.which(binary) or shutil.which(binary, path="/usr/sbin:/sbin")

    found = find()
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
        if subprocess.run(install, env=env, capture_output=True, check=False).returncode != 0:
            subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, check=False)
            subprocess.run(install, env=env, capture_output=True, check=False)
        found = find()
    if found is None:
        reason = f"needs {binary} (apt-get install {' '.join(packages)}, as root)"
        if required_in_ci and os.environ.get("CI"):
            import pytest

            pytest.fail(f"these tests must run in CI, but {reason}")
        import pytest

        pytest.skip(reason)
    return found


class ServerProcess:
    """`impasto-server FLAGS` in a process of its own; its log (stderr) in `log_file`."""

    def __init__(self, log_file: Path, *flags: str, env: dict[str, str] | None = None):
        import os

        self.log_file = log_file
        self._log = open(log_file, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "impasto.service.main", "--device", "cpu", *flags],
            stdout=subprocess.PIPE,
            stderr=self._log,
            env={**os.environ, **(env or {})},
        )

    def first_line(self) -> str:
        """The first line it prints (the pairing string, with --remote), once it serves."""
        line = self.process.stdout.readline().decode().strip()
        assert line, f"impasto-server ended without printing: {self.log()[-2000:]}"
        return line

    def log(self) -> str:
        self._log.flush()
        return self.log_file.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 60.0) -> bool:
        import time

        deadline = time.monotonic() + timeout
        while text not in self.log():
            if time.monotonic() > deadline or self.process.poll() is not None:
                return text in self.log()
            time.sleep(0.1)
        return True

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            code = self.process.wait(timeout=60)
        finally:
            self.process.stdout.close()
            self._log.close()
        return code
