"""A Redfish endpoint on the lab host: the lab machines' fence device.

Pacemaker fences real servers with Debian's fence_redfish against their BMC; the lab serves
the same agent, so the cluster's stonith configuration is the same in both places. Only what
fence_redfish 4.12.1 asks for is served, given --systems-uri:

    GET  /redfish/v1/Systems/<name>                                 PowerState, Reset target
    POST /redfish/v1/Systems/<name>/Actions/ComputerSystem.Reset    {"ResetType": "ForceOff"}
                                                                    {"ResetType": "On"}

There is no service root or Systems collection on purpose: without --systems-uri the agent
takes the *last* member of the collection, which here would be some other machine. A 404 makes
such a stonith device fail its monitor instead of one day fencing the wrong machine.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import contextlib
import hmac
import json
import os
import select
import signal
import socketserver
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TextIO
from urllib.parse import urlsplit

from hastack.errors import HastackError

if TYPE_CHECKING:
    from hastack.lab.lab import Lab  # the lab starts this module's daemon: no import cycle

MODULE = "hastack.lab.redfish"
SYSTEMS = "/redfish/v1/Systems/"
RESET = "/Actions/ComputerSystem.Reset"
# fence_redfish sends ForceOff for 'off' and On for 'on' (its 'reboot' is off, then on). Its
# 'diag' (Nmi) has no meaning for a container and is refused like any other value.
RESET_TYPES = ("On", "ForceOff")
MAX_BODY = 4096
# Daemons this process started: kept so that they are not reported as leaked children, and
# reaped by stop_daemon (a daemon left at exit is reparented to init, as it should be).
_children: dict[int, subprocess.Popen[bytes]] = {}

Reply = tuple[int, dict[str, Any] | None, str]  # status, JSON body, what the log says


class Power(Protocol):
    """Switches machines; the server only turns HTTP into these calls (and fakes test it)."""

    def is_on(self, name: str) -> bool: ...
    def power_off(self, name: str) -> None: ...  # immediate (like pulling the plug)
    def power_on(self, name: str) -> None: ...


class LabPower:
    """Lab machines' power. Off kills every process of the machine at once: fencing must
    leave a failed node no moment to write anything more, which a clean shutdown would."""

    def __init__(self, lab: Lab):
        self.lab = lab

    def is_on(self, name: str) -> bool:
        return self.lab.machine(name).running()

    def power_off(self, name: str) -> None:
        if self.is_on(name):
            self.lab.stop([name], graceful=False)

    def power_on(self, name: str) -> None:
        if not self.is_on(name):
            self.lab.start([name])


def _error(status: int, message_id: str, message: str) -> Reply:
    """A Redfish error body (DMTF Base message registry), so clients see why."""
    body = {"error": {
        "code": "Base.1.0.GeneralError",
        "message": "A general error has occurred. See ExtendedInfo for more information.",
        "@Message.ExtendedInfo": [{"MessageId": f"Base.1.0.{message_id}", "Message": message}],
    }}
    return status, body, message


class _Handler(BaseHTTPRequestHandler):
    server: RedfishServer
    timeout = 30  # a client that stalls (TLS handshake included) frees its thread
    server_version = "hastack-redfish"
    sys_version = ""

    def do_GET(self) -> None:
        self._serve(self._get)

    def do_POST(self) -> None:
        self._serve(self._post)

    def _serve(self, route: Callable[[str], Reply]) -> None:
        """Authenticate, route, answer, log: every request, whatever happens to it (and
        how long it took: a power change that keeps a fence waiting must show)."""
        started = time.monotonic()
        user, authenticated = self._credentials()
        if not authenticated:
            status, body, note = _error(401, "NoValidSession", "wrong or missing credentials")
        else:
            try:
                status, body, note = route(urlsplit(self.path).path.rstrip("/"))
            except Exception as exc:  # a backend failure is the client's 500, and is logged
                status, body, note = _error(500, "InternalError",
                                            f"{type(exc).__name__}: {' '.join(str(exc).split())}")
        data = json.dumps(body).encode() if body is not None else b""
        self.send_response(status)
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="hastack lab"')
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("OData-Version", "4.0")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.server.record(client=self.client_address[0], user=user,
                           request=f"{self.command} {self.path}", status=status, result=note,
                           took_ms=round(1000 * (time.monotonic() - started), 1))

    def _credentials(self) -> tuple[str | None, bool]:
        """The user name the client gave (for the log), and whether user and password match."""
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None, False
        try:
            user, colon, password = base64.b64decode(token.strip(), validate=True).decode()\
                .partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None, False
        # Both compared, in constant time: a timing must not tell which one was wrong.
        ok = hmac.compare_digest(user.encode(), self.server.user.encode())
        ok &= hmac.compare_digest(password.encode(), self.server.password.encode())
        return user, ok and bool(colon)

    def _get(self, path: str) -> Reply:
        name = path.removeprefix(SYSTEMS)
        if not path.startswith(SYSTEMS) or name not in self.server.systems:
            return _error(404, "ResourceMissingAtURI", f"no resource at {path}")
        state = "On" if self.server.power.is_on(name) else "Off"
        return 200, {
            "@odata.id": SYSTEMS + name,
            "@odata.type": "#ComputerSystem.v1_0_0.ComputerSystem",
            "Id": name,
            "Name": name,
            "PowerState": state,
            "Actions": {"#ComputerSystem.Reset": {
                "target": SYSTEMS + name + RESET,
                "ResetType@Redfish.AllowableValues": list(RESET_TYPES),
            }},
        }, f"PowerState={state}"

    def _post(self, path: str) -> Reply:
        name = path.removeprefix(SYSTEMS).removesuffix(RESET)
        if path != SYSTEMS + name + RESET or name not in self.server.systems:
            return _error(404, "ResourceMissingAtURI", f"no action at {path}")
        try:
            length = int(self.headers.get("Content-Length", ""))
            if not 0 < length <= MAX_BODY:
                raise ValueError(length)
            body = json.loads(self.rfile.read(length))
        except ValueError:  # json.JSONDecodeError and UnicodeDecodeError included
            return _error(400, "MalformedJSON", "the body is not a JSON object of sane size")
        reset = body.get("ResetType") if isinstance(body, dict) else None
        if reset is None:
            return _error(400, "ActionParameterMissing", "ResetType is missing")
        if reset not in RESET_TYPES:
            return _error(400, "PropertyValueNotInList",
                          f"ResetType {str(reset)[:40]!r} is not one of {', '.join(RESET_TYPES)}")
        with self.server.power_lock:  # one power change at a time: a machine is not
            if reset == "On":         # booted and killed by two threads at once
                self.server.power.power_on(name)
            else:
                self.server.power.power_off(name)
        return 204, None, f"ResetType={reset}"

    def log_message(self, format: str, *args: Any) -> None:
        """Silenced: _serve logs each request once, in the log given to the server."""

    def log_error(self, format: str, *args: Any) -> None:
        self.server.record(client=self.client_address[0], error=format % args)


class RedfishServer(ThreadingHTTPServer):
    """HTTPS only; the TLS handshake runs in the request's thread, not in the accept loop,
    so a client that never completes it blocks nobody."""

    daemon_threads = True

    def __init__(self, address: str, port: int, context: ssl.SSLContext, user: str,
                 password: str, systems: Sequence[str], power: Power, log: TextIO):
        if not user or not password:
            raise HastackError("the Redfish endpoint needs a user and a non-empty password")
        if not systems or any(not s or "/" in s for s in systems):
            raise HastackError(f"bad system names for the Redfish endpoint: {list(systems)}")
        self.user, self.password = user, password
        self.systems, self.power, self.log = frozenset(systems), power, log
        self.power_lock = threading.Lock()
        self._log_lock = threading.Lock()
        super().__init__((address, port), _Handler)
        self.socket = context.wrap_socket(self.socket, server_side=True,
                                          do_handshake_on_connect=False)

    def server_bind(self) -> None:
        """As HTTPServer's, without its reverse DNS lookup of the address."""
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A failed handshake or a dropped client: one log line, not a traceback on stderr."""
        exc = sys.exc_info()[1]
        self.record(client=client_address[0], error=f"{type(exc).__name__}: {exc}")

    def record(self, **fields: Any) -> None:
        """One JSON object a line: client-given strings cannot forge or break a line."""
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        line = json.dumps({"time": now, **fields})
        with self._log_lock:
            self.log.write(line + "\n")
            self.log.flush()


def make_server(address: str, port: int, cert: Path, key: Path, user: str, password: str,
                systems: Sequence[str], power: Power, log: TextIO) -> RedfishServer:
    """A bound server, not serving yet; port 0 picks a free port (see .server_address)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise HastackError(f"cannot load the Redfish certificate {cert} / key {key}: "
                           f"{exc}") from None
    try:
        server = RedfishServer(address, port, context, user, password, systems, power, log)
    except OSError as exc:
        raise HastackError(f"cannot listen on {address}:{port} for Redfish: "
                           f"{exc.strerror or exc}") from None
    server.record(event="listening", pid=os.getpid(), address=server.server_address[0],
                  port=server.server_address[1], systems=sorted(server.systems))
    return server


def serve(address: str, port: int, cert: Path, key: Path, user: str, password: str,
          systems: list[str], power: Power, log: TextIO) -> None:
    """Serve until the process ends."""
    with make_server(address, port, cert, key, user, password, systems, power, log) as server:
        server.serve_forever()


def start_in_thread(address: str, port: int, cert: Path, key: Path, user: str, password: str,
                    systems: Sequence[str], power: Power, log: TextIO) -> RedfishServer:
    """Serve from a daemon thread (tests); end with .shutdown(), then .server_close()."""
    server = make_server(address, port, cert, key, user, password, systems, power, log)
    threading.Thread(target=server.serve_forever, name="redfish", daemon=True).start()
    return server


# ---- the process ---------------------------------------------------------------------------
def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog=f"python -m {MODULE}",
                                     description="Redfish fence device for lab machines")
    parser.add_argument("--lab-dir", type=Path, required=True)
    parser.add_argument("--address", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True)
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--user", required=True)
    parser.add_argument("--password-file", type=Path, required=True,
                        help="a file, so the password never shows in the process list")
    parser.add_argument("--systems", required=True, help="machine names, comma-separated")
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args(argv)
    try:
        password = args.password_file.read_text().rstrip("\r\n")
        with args.log.open("a", encoding="utf-8") as log:
            serve(args.address, args.port, args.cert, args.key, args.user, password,
                  [s.strip() for s in args.systems.split(",") if s.strip()],
                  LabPower(_lab(args.lab_dir)), log)
    except (HastackError, OSError) as exc:
        sys.exit(f"{MODULE}: {exc}")
    except KeyboardInterrupt:
        pass


def _lab(root: Path) -> Lab:
    from hastack.lab.lab import Lab
    return Lab(root=root)


def start_daemon(*, lab_dir: Path, address: str, port: int, cert: Path, key: Path, user: str,
                 password_file: Path, systems: Sequence[str], log: Path, pidfile: Path,
                 timeout: float = 15.0) -> int:
    """Start the endpoint detached from the caller (own session, stdin /dev/null, output to
    the log) and return its PID, once it listens; if it already runs, its PID."""
    pid = _read_pid(pidfile)
    if pid is not None and _ours(pid):
        return pid
    log.parent.mkdir(parents=True, exist_ok=True)
    offset = log.stat().st_size if log.exists() else 0
    argv = [sys.executable, "-m", MODULE, "--lab-dir", str(lab_dir), "--address", address,
            "--port", str(port), "--cert", str(cert), "--key", str(key), "--user", user,
            "--password-file", str(password_file), "--systems", ",".join(systems),
            "--log", str(log)]
    with log.open("ab") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True, cwd="/")
    _children[proc.pid] = proc
    tmp = pidfile.with_name(pidfile.name + ".tmp")
    tmp.write_text(f"{proc.pid}\n")
    tmp.replace(pidfile)
    deadline = time.monotonic() + timeout
    while not _listening(log, offset, proc.pid):
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_daemon(pidfile)
            tail = log.read_bytes()[offset:].decode(errors="replace").strip().splitlines()[-1:]
            raise HastackError(f"the Redfish endpoint did not start: "
                               f"{tail[0] if tail else 'no output'} (see {log})")
        time.sleep(0.05)
    return proc.pid


def stop_daemon(pidfile: Path, timeout: float = 10.0) -> None:
    """Stop the endpoint by the PID in `pidfile`, and only if that process still is one
    (a PID is reused once its process is gone); then remove the pidfile."""
    pid = _read_pid(pidfile)
    if pid is not None:
        try:
            pidfd = os.pidfd_open(pid)  # from here on, this very process, even if the PID is
        except ProcessLookupError:      # reused meanwhile
            pidfd = None
        if pidfd is not None:
            try:
                if _ours(pid):
                    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                        with contextlib.suppress(ProcessLookupError):
                            signal.pidfd_send_signal(pidfd, sig)
                        if select.select([pidfd], [], [], wait)[0]:
                            break
                    else:
                        raise HastackError(f"the Redfish endpoint (PID {pid}) survived SIGKILL")
            finally:
                os.close(pidfd)
        if pid in _children and _children[pid].poll() is not None:
            del _children[pid]
    pidfile.unlink(missing_ok=True)


def _read_pid(pidfile: Path) -> int | None:
    try:
        pid = int(pidfile.read_text())
    except (OSError, ValueError):
        return None
    return pid if pid > 0 else None  # 0 and -1 would signal whole process groups


def _ours(pid: int) -> bool:
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return MODULE.encode() in args  # a zombie's cmdline is empty: gone


def _listening(log: Path, offset: int, pid: int) -> bool:
    """Whether process `pid` has written its 'listening' record to the log since `offset`."""
    with log.open("rb") as f:
        f.seek(offset)
        lines = f.read().splitlines()
    for line in lines:
        with contextlib.suppress(ValueError):
            entry = json.loads(line)
            if isinstance(entry, dict) and entry.get("event") == "listening" \
                    and entry.get("pid") == pid:
                return True
    return False


if __name__ == "__main__":
    main()
