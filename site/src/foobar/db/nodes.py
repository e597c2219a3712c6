"""One MariaDB server as the app sees it: an address, a role and per-thread connections.

Connections are plain PyMySQL, one per node per worker thread, so a gunicorn gthread
worker never shares a socket between threads and needs no pool. Every connection failure
drops the cached connection and surfaces as NodeUnavailable, which is what lets the router
fall back to the primary instead of failing the request.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import pymysql
import pymysql.cursors

T = TypeVar("T")

PRIMARY = "primary"
REPLICA = "replica"

DEFAULT_PORT = 3306


class NodeUnavailable(Exception):
    """The node could not be reached or dropped the connection; the statement may not have run."""

    def __init__(self, node_name: str, cause: BaseException):
        super().__init__(f"{node_name}: {cause}")
        self.node_name = node_name
        self.cause = cause


@dataclass(frozen=True)
class NodeAddress:
    host: str
    port: int = DEFAULT_PORT

    @property
    def name(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    def __str__(self) -> str:
        return self.name


def parse_address(text: str) -> NodeAddress:
    """Parse "host:port", "host" or "[v6addr]:port"; raise ValueError with the reason."""
    text = text.strip()
    if not text:
        raise ValueError("empty address")
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or not host:
            raise ValueError(f"bad address {text!r}")
        if rest and not rest.startswith(":"):
            raise ValueError(f"bad address {text!r}")
        port_text = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif ":" in text:
        raise ValueError(f"bad address {text!r} (write IPv6 as [addr]:port)")
    else:
        host, port_text = text, None
    if not host:
        raise ValueError(f"bad address {text!r}: no host")
    if port_text is None:
        return NodeAddress(host)
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"bad address {text!r}: port must be 1-65535")
    return NodeAddress(host, int(port_text))


@dataclass(frozen=True)
class ConnectSettings:
    database: str
    user: str
    password: str
    tls_ca: str | None = None
    connect_timeout: float = 1.0
    read_timeout: float = 2.0
    write_timeout: float = 2.0

    def connect_kwargs(self, address: NodeAddress) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "host": address.host,
            "port": address.port,
            "user": self.user,
            "password": self.password,
            "database": self.database,
            "charset": "utf8mb4",
            "autocommit": True,
            "connect_timeout": self.connect_timeout,
            "read_timeout": self.read_timeout,
            "write_timeout": self.write_timeout,
            "cursorclass": pymysql.cursors.DictCursor,
            # Store and read DATETIMEs in UTC whatever the server's zone is.
            "init_command": "SET time_zone = '+00:00'",
        }
        if self.tls_ca:
            # Require TLS, verify the chain against this CA and the host name against the cert.
            kwargs.update(ssl_ca=self.tls_ca, ssl_verify_cert=True, ssl_verify_identity=True)
        return kwargs


def connect(address: NodeAddress, settings: ConnectSettings) -> pymysql.connections.Connection:
    try:
        return pymysql.connect(**settings.connect_kwargs(address))
    except (pymysql.err.OperationalError, pymysql.err.InterfaceError, OSError) as exc:
        raise NodeUnavailable(address.name, exc) from exc


class Node:
    """A server plus this process's per-thread connections to it."""

    # A connection idle longer than this is pinged before use, so a server restart between
    # requests costs a reconnect instead of a failed write.
    ping_after_idle = 5.0

    def __init__(self, address: NodeAddress, role: str, settings: ConnectSettings):
        self.address = address
        self.role = role
        self.settings = settings
        self._local = threading.local()

    @property
    def name(self) -> str:
        return self.address.name

    def __repr__(self) -> str:
        return f"Node({self.name}, {self.role})"

    def _connection(self) -> pymysql.connections.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and time.monotonic() - self._local.used_at > self.ping_after_idle:
            try:
                conn.ping(reconnect=False)
            except (pymysql.err.Error, OSError):
                self.discard()
                conn = None
        if conn is None:
            conn = connect(self.address, self.settings)
            self._local.conn = conn
        self._local.used_at = time.monotonic()
        return conn

    def run(self, work: Callable[[Any], T], *, transaction: bool = False) -> T:
        """Run work(cursor) on this node; with transaction=True inside BEGIN/COMMIT."""
        conn = self._connection()
        try:
            with conn.cursor() as cursor:
                if not transaction:
                    return work(cursor)
                conn.begin()
                try:
                    result = work(cursor)
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()
                return result
        except (pymysql.err.OperationalError, pymysql.err.InterfaceError, OSError) as exc:
            self.discard()
            raise NodeUnavailable(self.name, exc) from exc

    def discard(self) -> None:
        """Forget this thread's connection (closing it if still open)."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken, nothing to report
                conn.close()

    def probe(self, timeout: float = 1.0) -> float:
        """SELECT 1 on a fresh short-lived connection; return seconds taken or raise."""
        started = time.monotonic()
        settings = ConnectSettings(
            database=self.settings.database,
            user=self.settings.user,
            password=self.settings.password,
            tls_ca=self.settings.tls_ca,
            connect_timeout=timeout,
            read_timeout=timeout,
            write_timeout=timeout,
        )
        conn = connect(self.address, settings)
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT 1")
                cursor.fetchall()
        except (pymysql.err.Error, OSError) as exc:
            raise NodeUnavailable(self.name, exc) from exc
        finally:
            with contextlib.suppress(Exception):
                conn.close()
        return time.monotonic() - started
