"""Dead database nodes on 127.0.0.1: the ways a powered-off machine looks to a client.

A machine that is switched off sends nothing back, not even a reset: a connect hangs until
the client's connect timeout, and a connection that was open just stops answering. These
helpers make each of those on the loopback interface only:

- `SilentListener`: accepts connections and never sends a byte, so a client waits for the
  MariaDB greeting until its timeout (what a hung or SIGSTOPped server also looks like).
- `FullBacklog`: listens but never accepts, with its accept queue already full, so the
  kernel drops new SYNs and connect() itself hangs (what an absent host looks like).
- `stopped(server)`: SIGSTOP a throwaway mariadbd by PID, SIGCONT on the way out: its open
  connections stop answering and new ones get no greeting.
- `FaultProxy`: a TCP relay in front of a real server that can lose the reply to one
  statement after the server has run it (a write whose outcome the client cannot know),
  closing the connection as a server crash or a network cut would. To see statements it
  hides the server's TLS capability in its greeting, so a client that only prefers TLS
  (PyMySQL without ssl_ca, as the app without FOOBAR_DB_TLS_CA) talks in plain text.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time


def _listener(backlog: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen(backlog)
    return sock


class SilentListener:
    """Accepts connections, reads and discards what arrives, never answers."""

    def __init__(self):
        self._sock = _listener(128)
        self.port = self._sock.getsockname()[1]
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self._held.append(conn)
            threading.Thread(target=_drain, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        for conn in self._held:
            _close(conn)

    def __enter__(self) -> SilentListener:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _drain(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while conn.recv(65536):
            pass


class FullBacklog:
    """A port whose listener never accepts: once its queue is full, SYNs are dropped."""

    def __init__(self):
        self._sock = _listener(0)
        self.port = self._sock.getsockname()[1]
        self._fillers: list[socket.socket] = []
        # Fill the accept queue with connections nobody accepts, until a connect hangs.
        for _ in range(16):
            if not self._connects_within(0.2):
                return
        self.close()
        raise RuntimeError("could not fill the accept queue of a listen(0) socket")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _connects_within(self, seconds: float) -> bool:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.settimeout(seconds)
        try:
            sock.connect(("127.0.0.1", self.port))
        except TimeoutError:
            sock.close()
            return False
        self._fillers.append(sock)
        return True

    def close(self) -> None:
        for sock in self._fillers:
            sock.close()
        self._sock.close()

    def __enter__(self) -> FullBacklog:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextlib.contextmanager
def stopped(server):
    """SIGSTOP a lab Server's mariadbd (by PID) for the block; SIGCONT whatever happens."""
    pid = server.pid
    assert pid, f"{server.name} is not running"
    os.kill(pid, signal.SIGSTOP)
    try:
        # The signal is asynchronous: a thread in the middle of a query could still answer.
        wait_for(lambda: _all_threads_stopped(pid), 5, f"{server.name} to stop")
        yield
    finally:
        os.kill(pid, signal.SIGCONT)


def _all_threads_stopped(pid: int) -> bool:
    tasks = f"/proc/{pid}/task"
    for tid in os.listdir(tasks):
        try:
            with open(f"{tasks}/{tid}/stat") as f:
                state = f.read().rpartition(")")[2].split()[0]
        except FileNotFoundError:
            continue  # a thread that just exited
        if state != "T":
            return False
    return True


CLIENT_SSL = 0x0800  # capability flag in the MariaDB greeting


def hide_tls(greeting: bytes) -> bytes:
    """The server's first packet with its SSL capability cleared."""
    version_end = greeting.index(b"\x00", 5)
    # length(3) seq(1) protocol(1) version NUL, thread id(4), scramble(8), filler(1)
    at = version_end + 1 + 4 + 8 + 1
    flags = int.from_bytes(greeting[at:at + 2], "little") & ~CLIENT_SSL
    return greeting[:at] + flags.to_bytes(2, "little") + greeting[at + 2:]


class FaultProxy:
    """Relays 127.0.0.1:port to a server, and loses one reply when told to."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self._sock = _listener(128)
        self.port = self._sock.getsockname()[1]
        self._lock = threading.Lock()
        self._lose_reply_to: bytes | None = None
        self.replies_lost = 0
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def lose_reply_to(self, statement: bytes) -> None:
        """Once: pass the next packet containing `statement` to the server, wait for its
        answer, then close the client's connection instead of passing that answer on."""
        self._lose_reply_to = statement

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._sock.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(client)
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=2)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._conns.append(upstream)
            pair = _Pair(self, client, upstream)
            threading.Thread(target=pair.client_to_server, daemon=True).start()
            threading.Thread(target=pair.server_to_client, daemon=True).start()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            _close(conn)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


class _Pair:
    def __init__(self, proxy: FaultProxy, client: socket.socket, upstream: socket.socket):
        self.proxy = proxy
        self.client = client
        self.upstream = upstream
        self.swallow_reply = threading.Event()

    def client_to_server(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.client.recv(65536):
                wanted = self.proxy._lose_reply_to
                if wanted is not None and wanted in data:
                    self.proxy._lose_reply_to = None
                    self.swallow_reply.set()
                self.upstream.sendall(data)
        _close(self.upstream)  # the client hung up: so does the proxy, towards the server

    def server_to_client(self) -> None:
        with contextlib.suppress(OSError):
            greeting = self.upstream.recv(65536)
            if not greeting:
                return
            self.client.sendall(hide_tls(greeting))
            while data := self.upstream.recv(65536):
                if self.swallow_reply.is_set():
                    # The server has answered (it ran the statement); the client never
                    # hears it: both connections just close (shutdown also wakes the
                    # other direction's thread, so the FINs go out now).
                    self.proxy.replies_lost += 1
                    _close(self.client)
                    _close(self.upstream)
                    return
                self.client.sendall(data)
        _close(self.client)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
