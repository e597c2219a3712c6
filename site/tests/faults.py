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
- `FaultProxy`: a TCP relay in front of a real server that can turn into a black hole
  (every connection, open or new, goes silent) or lose the reply to one statement after the
  server has run it (a write whose outcome the client cannot know).
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
            conn.close()

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


class FaultProxy:
    """Relays 127.0.0.1:port to a server, until told to fail in one of two ways."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self._sock = _listener(128)
        self.port = self._sock.getsockname()[1]
        self._lock = threading.Lock()
        self._black_hole = False
        self._lose_reply_to: bytes | None = None
        self.replies_lost = 0
        self._conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def black_hole(self) -> None:
        """From now on nothing passes either way, on open connections and on new ones."""
        self._black_hole = True

    def restore(self) -> None:
        """Relay again. Connections that were silenced are reset, as by a rebooted host."""
        with self._lock:
            conns, self._conns = self._conns, []
            self._black_hole = False
        for conn in conns:
            _reset(conn)

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
                silent = self._black_hole
            if silent:
                threading.Thread(target=_drain, args=(client,), daemon=True).start()
                continue
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
            conn.close()

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _reset(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        # SO_LINGER 0: close() sends RST instead of FIN.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
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
                if self.proxy._black_hole:
                    continue
                wanted = self.proxy._lose_reply_to
                if wanted is not None and wanted in data:
                    self.proxy._lose_reply_to = None
                    self.swallow_reply.set()
                self.upstream.sendall(data)

    def server_to_client(self) -> None:
        with contextlib.suppress(OSError):
            while data := self.upstream.recv(65536):
                if self.proxy._black_hole:
                    continue
                if self.swallow_reply.is_set():
                    # The server has answered (it ran the statement); the client never
                    # hears it: its connection just closes.
                    self.proxy.replies_lost += 1
                    self.client.close()
                    self.upstream.close()
                    return
                self.client.sendall(data)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.01):
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)
