"""`impasto-server --remote` on a GPU machine: secrets made once, one pairing string, a client that checks
the server's certificate before it sends the token, and the systemd unit in deploy/."""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import ServerProcess, free_port, system_tool
from impasto.protocol import parse_address
from impasto.service.pairing import fingerprint_of, secrets_in

REPO = Path(__file__).resolve().parent.parent
PAIRING = re.compile(r"impasto://[^?\s]+:\d+\?token=[A-Za-z0-9_-]+&sha256=[0-9a-f]{64}")


def impasto(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("IMPASTO_SERVER", "IMPASTO_TOKEN")}
    return subprocess.run(
        [sys.executable, "-m", "impasto.cli", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**clean, **(env or {})},
    )


def remote_server(state: Path, log: Path, port: int, images: Path, *flags: str) -> ServerProcess:
    return ServerProcess(
        log,
        "--remote",
        "--port",
        str(port),
        "--state-dir",
        str(state),
        "--styles-dir",
        str(images / "styles"),
        *flags,
        env={"IMPASTO_TOKEN": "not-the-servers"},  # a client's setting: --remote keeps its own token
    )


@pytest.fixture(scope="module")
def paired(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, ServerProcess]]:
    folder = tmp_path_factory.mktemp("remote")
    server = remote_server(folder / "state", folder / "server.log", free_port(), images)
    try:
        yield server.first_line(), server
    finally:
        server.stop()


def test_the_pairing_string_names_the_address_the_token_and_the_certificate(paired, tmp_path: Path):
    string, server = paired
    assert PAIRING.fullmatch(string), string
    state = Path(server.process.args[server.process.args.index("--state-dir") + 1])
    address = parse_address(string)
    assert address.token == (state / "token").read_text().strip()
    assert address.fingerprint == fingerprint_of(state / "tls-cert.pem")
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    for name in ("token", "tls-key.pem", "tls-cert.pem"):
        assert stat.S_IMODE((state / name).stat().st_mode) == 0o600, name
    assert "token required" in server.log() and "TLS" in server.log()


def test_the_cli_paints_through_a_remote_server_with_only_the_string(paired, images: Path, tmp_path: Path):
    string, _ = paired
    out = tmp_path / "out.png"
    content = images / "content" / "camera.png"
    done = impasto("stylize", str(content), "--style", "udnie", "-o", str(out), "--server", string,
                   "--size", "32", "--iterations", "2", "--quiet")  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.stat().st_size > 0
    # $IMPASTO_SERVER takes it too; and no sentence shows the token.
    info = impasto("info", env={"IMPASTO_SERVER": string})
    assert info.returncode == 0, info.stderr
    assert parse_address(string).token not in info.stdout + info.stderr


def test_a_wrong_fingerprint_is_refused_before_the_token_is_sent(paired):
    string, server = paired
    fingerprint = parse_address(string).fingerprint
    impostor = string.replace(fingerprint, fingerprint[::-1])
    refused = impasto("info", "--server", impostor)
    assert refused.returncode != 0
    assert "is not the one this was paired with" in refused.stderr, refused.stderr
    assert "nothing was sent" in refused.stderr
    # A call that does reach the server with a wrong token is logged: the same check, had one come.
    token = parse_address(string).token
    wrong_token = impasto("info", "--server", string.replace(token, "x" + token[1:]))
    assert "did not accept the token" in wrong_token.stderr, wrong_token.stderr
    assert server.wait_for_log("refused a call"), server.log()[-2000:]
    assert server.log().count("refused a call") == 1, server.log()[-2000:]


def test_secrets_are_made_once_and_renewed_on_request(tmp_path: Path):
    def made(renew: bool = False) -> tuple[str, str]:
        secrets = secrets_in(tmp_path / "state", renew)
        return secrets.token, fingerprint_of(secrets.cert)

    first = made()
    assert made() == first
    renewed = made(renew=True)
    assert renewed[0] != first[0] and renewed[1] != first[1]


@pytest.mark.slow
def test_running_again_prints_the_same_string_and_new_secrets_a_new_one(images: Path, tmp_path: Path):
    port = free_port()
    strings = []
    for flags in ((), (), ("--new-secrets",)):
        server = remote_server(tmp_path / "state", tmp_path / "server.log", port, images, *flags)
        try:
            strings.append(server.first_line())
        finally:
            assert server.stop() == 0
    first, renewed = parse_address(strings[0]), parse_address(strings[2])
    assert strings[0] == strings[1]
    assert renewed.token != first.token and renewed.fingerprint != first.fingerprint
    assert (renewed.host, renewed.port) == (first.host, first.port)


def test_new_secrets_goes_with_remote():
    done = subprocess.run(
        [sys.executable, "-m", "impasto.service.main", "--new-secrets"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "--new-secrets goes with --remote" in done.stderr


def test_the_systemd_unit_verifies(tmp_path: Path):
    analyze = system_tool("systemd-analyze", ["systemd"], required_in_ci=False)
    unit = (REPO / "deploy" / "impasto-server.service").read_text()
    assert "--remote" in unit and "DynamicUser=yes" in unit and "Restart=on-failure" in unit
    assert "StateDirectory=impasto" in unit and "--state-dir %S/impasto" in unit
    # The unit names the installed program's usual place; here it is this checkout's.
    server = shutil.which("impasto-server", path=str(Path(sys.executable).parent))
    assert server is not None
    (tmp_path / "impasto-server.service").write_text(unit.replace("/usr/local/bin/impasto-server", server))
    done = subprocess.run(
        [analyze, "verify", str(tmp_path / "impasto-server.service")], capture_output=True, text=True
    )
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr
