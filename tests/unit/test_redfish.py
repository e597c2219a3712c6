"""The lab's Redfish fence device, driven by the real fence_redfish agent (Debian's
fence-agents), so the lab and real BMCs are fenced by the same code. On 127.0.0.1 only."""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import io
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from hastack.lab import redfish

AGENT = "/usr/sbin/fence_redfish"
USER, PASSWORD = "fencer", "s3cret pass"
LOOPBACK = "127.0.0.1"
DB1 = "/redfish/v1/Systems/db1"

needs_agent = pytest.mark.skipif(
    not os.access(AGENT, os.X_OK),
    reason=f"{AGENT} is missing: install Debian's fence-agents (apt-get install -y fence-agents)")


class FakePower:
    """Machines as booleans; records every change asked for."""

    def __init__(self, **machines: bool):
        self.on = dict(machines)
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def is_on(self, name: str) -> bool:
        return self.on[name]

    def power_off(self, name: str) -> None:
        with self.lock:
            self.calls.append(("off", name))
            self.on[name] = False

    def power_on(self, name: str) -> None:
        with self.lock:
            self.calls.append(("on", name))
            self.on[name] = True


@pytest.fixture
def tls(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA certificate for 127.0.0.1, and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "hastack lab redfish")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(LOOPBACK))]), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "redfish.crt", tmp_path / "redfish.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file


@pytest.fixture
def endpoint(tls: tuple[Path, Path]) -> Iterator[tuple[int, FakePower, io.StringIO]]:
    power = FakePower(db1=True, db2=True)
    log = io.StringIO()
    server = redfish.start_in_thread(LOOPBACK, 0, *tls, USER, PASSWORD, ["db1", "db2"], power,
                                     log)
    try:
        yield server.server_address[1], power, log
    finally:
        server.shutdown()
        server.server_close()


def _agent_env(**extra: str) -> dict[str, str]:
    """No proxy may carry the agent's requests (python-requests honours *_proxy) off the host."""
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    return {**env, "NO_PROXY": "*", "no_proxy": "*", **extra}


def fence(port: int, action: str, *options: str, password: str = PASSWORD,
          uri: str | None = DB1, ssl_option: str = "--ssl-insecure",
          env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    argv = [AGENT, "--ip", LOOPBACK, "--ipport", str(port), "--username", USER,
            "--password", password, ssl_option, "--action", action, "--power-timeout", "3",
            *options]
    if uri is not None:
        argv += ["--systems-uri", uri]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60,
                          env=env or _agent_env())


def records(log: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in log.getvalue().splitlines()]


@needs_agent
def test_off_status_on_monitor_with_the_real_agent(endpoint):
    port, power, log = endpoint
    status = fence(port, "status")
    assert (status.returncode, status.stdout.strip()) == (0, "Status: ON"), status.stderr

    off = fence(port, "off")
    assert off.returncode == 0, off.stderr
    assert "Success: Powered OFF" in off.stdout
    assert power.on == {"db1": False, "db2": True}
    status = fence(port, "status")
    assert (status.returncode, status.stdout.strip()) == (2, "Status: OFF")  # 2: off

    assert fence(port, "off").stdout.strip() == "Success: Already OFF"  # and nothing sent
    on = fence(port, "on")
    assert on.returncode == 0, on.stderr
    assert power.on == {"db1": True, "db2": True}
    assert power.calls == [("off", "db1"), ("on", "db1")]
    assert fence(port, "monitor").returncode == 0

    entries = [e for e in records(log) if "request" in e]
    assert {(e["user"], e["client"]) for e in entries} == {(USER, LOOPBACK)}
    posts = [(e["request"], e["status"], e["result"]) for e in entries
             if e["request"].startswith("POST")]
    reset = f"POST {DB1}/Actions/ComputerSystem.Reset"
    assert posts == [(reset, 204, "ResetType=ForceOff"), (reset, 204, "ResetType=On")]


@needs_agent
def test_reboot_is_off_then_on(endpoint):
    """Pacemaker's default fencing action."""
    port, power, _ = endpoint
    result = fence(port, "reboot")
    assert result.returncode == 0, result.stderr
    assert power.calls == [("off", "db1"), ("on", "db1")]
    assert power.on["db1"]


@needs_agent
def test_wrong_password_fails_and_changes_nothing(endpoint):
    port, power, log = endpoint
    for action in ("status", "off"):
        assert fence(port, action, password="wrong").returncode != 0
    assert power.calls == [] and power.on["db1"]
    assert {e["status"] for e in records(log) if "request" in e} == {401}


@needs_agent
def test_unknown_system_fails(endpoint):
    port, power, log = endpoint
    for action in ("status", "off", "monitor"):
        assert fence(port, action, uri="/redfish/v1/Systems/db3").returncode != 0
    assert power.calls == []
    assert {e["status"] for e in records(log) if "request" in e} == {404}


@needs_agent
def test_without_systems_uri_nothing_is_fenced(endpoint):
    """The agent would fence the last system of the collection; here it must fail instead."""
    port, power, _ = endpoint
    assert fence(port, "off", uri=None).returncode != 0
    assert fence(port, "monitor", uri=None).returncode != 0
    assert power.calls == []


@needs_agent
def test_certificate_is_verified_without_ssl_insecure(endpoint, tls):
    port, power, _ = endpoint
    assert fence(port, "status", ssl_option="--ssl").returncode != 0  # unknown issuer
    trusted = fence(port, "status", ssl_option="--ssl",
                    env=_agent_env(REQUESTS_CA_BUNDLE=str(tls[0])))
    assert trusted.returncode == 0, trusted.stderr


def _request(port: int, method: str, path: str, body: object = None,
             auth: tuple[str, str] = (USER, PASSWORD)) -> tuple[int, dict | None]:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    conn = http.client.HTTPSConnection(LOOPBACK, port, context=context, timeout=10)
    token = base64.b64encode(":".join(auth).encode()).decode()
    headers = {"Authorization": f"Basic {token}", "Content-Type": "application/json"}
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body),
                     headers=headers)
        response = conn.getresponse()
        data = response.read()
        return response.status, json.loads(data) if data else None
    finally:
        conn.close()


def test_system_resource_and_errors(endpoint):
    port, power, _ = endpoint
    status, system = _request(port, "GET", DB1)
    assert status == 200
    assert system["PowerState"] == "On"
    assert system["Actions"]["#ComputerSystem.Reset"] == {
        "target": f"{DB1}/Actions/ComputerSystem.Reset",
        "ResetType@Redfish.AllowableValues": ["On", "ForceOff"]}

    reset = f"{DB1}/Actions/ComputerSystem.Reset"
    for body in ({"ResetType": "Nmi"}, {"ResetType": "GracefulShutdown"}, {}, [1], "x"):
        status, error = _request(port, "POST", reset, body)
        assert status == 400, body
        assert error["error"]["@Message.ExtendedInfo"][0]["MessageId"].startswith("Base.")
    status, error = _request(port, "POST", reset, {"ResetType": "Nmi"})
    assert "PropertyValueNotInList" in error["error"]["@Message.ExtendedInfo"][0]["MessageId"]
    assert _request(port, "POST", reset, {"ResetType": "ForceOff"}, auth=(USER, "x"))[0] == 401
    assert _request(port, "GET", DB1, auth=("root", PASSWORD))[0] == 401
    assert _request(port, "GET", "/redfish/v1")[0] == 404
    assert _request(port, "POST", "/redfish/v1/Systems/db3/Actions/ComputerSystem.Reset",
                    {"ResetType": "ForceOff"})[0] == 404
    assert power.calls == []


def test_backend_failure_is_a_500(tls):
    class Broken(FakePower):
        def is_on(self, name: str) -> bool:
            raise RuntimeError("no lab is up")

    log = io.StringIO()
    server = redfish.start_in_thread(LOOPBACK, 0, *tls, USER, PASSWORD, ["db1"], Broken(), log)
    try:
        status, error = _request(server.server_address[1], "GET", DB1)
    finally:
        server.shutdown()
        server.server_close()
    assert status == 500
    assert "no lab is up" in error["error"]["@Message.ExtendedInfo"][0]["Message"]


def test_plain_http_client_is_refused_and_logged(endpoint):
    port, _, log = endpoint
    with socket.create_connection((LOOPBACK, port), timeout=5) as sock:
        sock.sendall(b"GET /redfish/v1/Systems/db1 HTTP/1.0\r\n\r\n")
        assert b"PowerState" not in sock.recv(4096)
    assert _request(port, "GET", DB1)[0] == 200  # the server still serves
    assert any("error" in e for e in records(log))


# ---- the daemon ------------------------------------------------------------------------------
@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A process of someone else's; killed (by its own PID) at the end."""
    proc = subprocess.Popen(["sleep", "30"])
    yield proc
    proc.kill()
    proc.wait()


def test_stop_daemon_kills_nothing_but_ours(tmp_path, sleeper):
    pidfile = tmp_path / "redfish.pid"
    pidfile.write_text(f"{sleeper.pid}\n")
    redfish.stop_daemon(pidfile)
    assert sleeper.poll() is None  # still alive
    assert not pidfile.exists()  # a stale pidfile is dropped
    redfish.stop_daemon(pidfile)  # nothing to do: no error
    for garbage in ("0", "-1", "", "nonsense"):  # 0 and -1 would mean process groups
        pidfile.write_text(garbage)
        redfish.stop_daemon(pidfile)
        assert not pidfile.exists()
    assert sleeper.poll() is None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def test_daemon_starts_once_and_stops(tmp_path, tls):
    """The real entry point, with a lab that is not up: the endpoint answers 500."""
    (tmp_path / "password").write_text(PASSWORD + "\n")
    pidfile, log, port = tmp_path / "redfish.pid", tmp_path / "redfish.log", _free_port()
    options = dict(lab_dir=tmp_path / "lab", address=LOOPBACK, port=port, cert=tls[0],
                   key=tls[1], user=USER, password_file=tmp_path / "password",
                   systems=["db1", "db2"], log=log, pidfile=pidfile)
    pid = redfish.start_daemon(**options)
    try:
        assert int(pidfile.read_text()) == pid
        assert redfish.start_daemon(**options) == pid  # already running: the same one
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert PASSWORD.encode() not in cmdline and b"hastack.lab.redfish" in cmdline
        assert os.getsid(pid) == pid  # a session of its own
        status, error = _request(port, "GET", DB1)
        assert status == 500
        assert "no lab is up" in error["error"]["@Message.ExtendedInfo"][0]["Message"]
        redfish.stop_daemon(pidfile)
        assert not pidfile.exists()
        assert not redfish._ours(pid)
        redfish.stop_daemon(pidfile)
    finally:
        if redfish._ours(pid):
            os.kill(pid, 9)
    text = log.read_text()
    assert '"event": "listening"' in text and '"status": 500' in text


def test_daemon_that_cannot_start_says_why(tmp_path, tls):
    (tmp_path / "password").write_text(PASSWORD)
    pidfile = tmp_path / "redfish.pid"
    with pytest.raises(redfish.HastackError, match="certificate"):
        redfish.start_daemon(lab_dir=tmp_path / "lab", address=LOOPBACK, port=_free_port(),
                             cert=tmp_path / "missing.crt", key=tls[1], user=USER,
                             password_file=tmp_path / "password", systems=["db1"],
                             log=tmp_path / "redfish.log", pidfile=pidfile)
    assert not pidfile.exists()

