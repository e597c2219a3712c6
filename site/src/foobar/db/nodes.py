"""One MariaDB server as the app sees it: an address and per-thread connections.

A node has no fixed role: which node is the primary is whatever the servers say
(@@read_only), which the router asks about (foobar.db.health) and may change at any time,
e.g. in a planned switchover.

Connections are plain PyMySQL, one per node per worker thread, so a gunicorn gthread
worker never shares a socket between threads and needs no pool. Every connection failure
drops the cached connection and surfaces as NodeUnavailable, which is what lets the router
fall back to another node instead of failing the request. NodeUnavailable also says
whether the work certainly did not take effect (`not_applied`), which is what makes a
write safe to retry elsewhere, and whether the node looks dead (`unreachable`: it could not
be connected to, or stopped answering until a timeout), which is what lets the router stop
sending work to it at once instead of letting every request wait out the same timeout.

A machine that is switched off sends nothing back: connects and reads hang until their
timeouts. Every wait is therefore bounded: the TCP connect *and* the MariaDB handshake
(greeting, TLS, authentication) by `connect_timeout`, each read or write by
`read_timeout` / `write_timeout`, and the answers a live server gives at once (the ping
of a connection kept idle, a transaction's BEGIN) by QUICK_ANSWER_TIMEOUT: that is where a
kept connection to a server that went silent is found out, before any work was sent.
"""

from __future__ import annotations

import contextlib
import dataclasses
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


# ER_OPTION_PREVENTS_STATEMENT: "running with the --read-only option". The server refuses
# the statement (or, at COMMIT, rolls the whole transaction back), so nothing was applied.
ER_OPTION_PREVENTS_STATEMENT = 1290
CR_SERVER_GONE_ERROR = 2006
CR_SERVER_LOST = 2013


def is_read_only_refusal(exc: BaseException) -> bool:
    return (
        isinstance(exc, pymysql.err.MySQLError)
        and bool(exc.args)
        and exc.args[0] == ER_OPTION_PREVENTS_STATEMENT
    )


def is_timeout(exc: BaseException) -> bool:
    """Whether a driver error comes from a socket timeout (the peer went silent)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, TimeoutError):
            return True
        seen.add(id(current))
        # PyMySQL keeps the OSError of a failed connect in original_exception, and raises
        # "lost connection" / "gone away" from inside its `except OSError` (__context__).
        lost = isinstance(current, pymysql.err.OperationalError) and current.args[:1] in (
            (CR_SERVER_GONE_ERROR,),
            (CR_SERVER_LOST,),
        )
        current = (
            getattr(current, "original_exception", None)
            or current.__cause__
            or (current.__context__ if lost else None)
        )
    return False


class NodeUnavailable(Exception):
    """The node could not be reached, dropped the connection, or refused to write.

    not_applied is True only when the work certainly did not take effect: the connection
    failed before any of it was sent (connect refused or timed out, or the BEGIN of a
    transaction failed), or the server refused it because it is read-only (error 1290).
    Otherwise (e.g. the connection was lost after an INSERT was sent) it may have
    committed, and a write must not be repeated unless it is idempotent.

    unreachable is True when the node looks dead rather than merely unlucky: no connection
    could be made, or the server did not answer within a timeout. (A connection reset or a
    server error is not: the next connection will most likely work.)
    """

    def __init__(
        self,
        node_name: str,
        cause: BaseException,
        *,
        not_applied: bool = False,
        unreachable: bool | None = None,
    ):
        super().__init__(f"{node_name}: {cause}")
        self.node_name = node_name
        self.cause = cause
        self.not_applied = not_applied
        self.unreachable = is_timeout(cause) if unreachable is None else unreachable

    @property
    def read_only(self) -> bool:
        """The server refused the work because it is read-only (no longer the primary)."""
        return is_read_only_refusal(self.cause)

    @classmethod
    def from_error(
        cls, node_name: str, exc: BaseException, *, work_sent: bool
    ) -> NodeUnavailable:
        """Wrap a driver error; work_sent: whether any of the work may have reached the server."""
        return cls(node_name, exc, not_applied=not work_sent or is_read_only_refusal(exc))


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


# Health checks (foobar.db.health) run in the background and must notice a silent node
# quickly: their connect, handshake, read and write each get this long.
CHECK_TIMEOUT = 0.5
# A ping or a BEGIN costs a live server nothing: no answer within this means it is silent.
# Short, because the first request of each app process to meet a primary that just died
# pays it (the processes do not share what they learnt), and the proxies' retries of its
# 503 may meet another such process: two of them must stay well inside the 1 s in which a
# write is refused once the primary is gone. Mistaking a slow moment for death costs a
# retry (nothing was sent yet) and a check that clears the node again within milliseconds.
QUICK_ANSWER_TIMEOUT = 0.3
# A TCP connect is answered by the peer's kernel within a millisecond on a LAN, whatever
# its load: no answer within this means its machine or its link is gone. (The MariaDB
# handshake after it, TLS included, has the whole connect_timeout.)
TCP_CONNECT_TIMEOUT = 0.3

# Per session, for the app's connections:
# - time_zone: store and read DATETIMEs in UTC whatever the server's zone is;
# - innodb_lock_wait_timeout: the only row lock a request may wait for is an idempotency
#   key that a concurrent request with the same key holds for a few milliseconds; give
#   up after 1 s with error 1205 (well inside the 2 s read timeout, so a lock wait is never
#   mistaken for a dead server);
# - idle_transaction_timeout: the app sends a transaction's statements back to back; a
#   transaction idle for 10 s belongs to an app process that died mid-request, and the
#   server drops it (releasing its key) instead of holding it until the TCP connection
#   times out hours later.
SESSION_INIT = (
    "SET time_zone = '+00:00', innodb_lock_wait_timeout = 1, idle_transaction_timeout = 10"
)


@dataclass(frozen=True)
class ConnectSettings:
    database: str
    user: str
    password: str
    tls_ca: str | None = None
    connect_timeout: float = 1.0  # the MariaDB handshake (its TCP connect: at most
    # TCP_CONNECT_TIMEOUT of it)
    read_timeout: float = 2.0
    write_timeout: float = 2.0

    def for_checks(self, timeout: float = CHECK_TIMEOUT) -> ConnectSettings:
        """The same credentials with the health checks' short timeouts."""
        return dataclasses.replace(
            self,
            connect_timeout=min(self.connect_timeout, timeout),
            read_timeout=min(self.read_timeout, timeout),
            write_timeout=min(self.write_timeout, timeout),
        )

    def connect_kwargs(self, address: NodeAddress) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "host": address.host,
            "port": address.port,
            "user": self.user,
            "password": self.password,
            "database": self.database,
            "charset": "utf8mb4",
            "autocommit": True,
            "connect_timeout": min(self.connect_timeout, TCP_CONNECT_TIMEOUT),
            # The handshake is bounded by the connect timeout too (see connect()).
            "read_timeout": self.connect_timeout,
            "write_timeout": self.connect_timeout,
            "cursorclass": pymysql.cursors.DictCursor,
            "init_command": SESSION_INIT,
        }
        if self.tls_ca:
            # Require TLS, verify the chain against this CA and the host name against the cert.
            kwargs.update(ssl_ca=self.tls_ca, ssl_verify_cert=True, ssl_verify_identity=True)
        return kwargs


def connect(address: NodeAddress, settings: ConnectSettings) -> pymysql.connections.Connection:
    """A new connection: its TCP connect within TCP_CONNECT_TIMEOUT, each answer of the
    handshake within settings.connect_timeout.

    PyMySQL bounds only the TCP connect by connect_timeout and reads the server's greeting
    with the read timeout, so a server that accepts but never greets (hung, SIGSTOPped)
    would cost a full read timeout. The connection is therefore opened with the connect
    timeout as its read/write timeouts, which are raised to their real values afterwards.
    """
    try:
        conn = pymysql.connect(**settings.connect_kwargs(address))
    except (pymysql.err.OperationalError, pymysql.err.InterfaceError, OSError) as exc:
        # Nothing was sent yet: whatever was to run on this connection did not. Whatever
        # the reason (silence, refusal, TLS, credentials), this node cannot be used now.
        raise NodeUnavailable(address.name, exc, not_applied=True, unreachable=True) from exc
    # PyMySQL 1.x re-applies these to the socket before each read/write (_current_timeout).
    conn._read_timeout = settings.read_timeout
    conn._write_timeout = settings.write_timeout
    return conn


@contextlib.contextmanager
def _reading_within(conn: pymysql.connections.Connection, seconds: float | None):
    """Read the answers of the block within `seconds` each (if shorter than the read
    timeout; None: the read timeout)."""
    usual = conn._read_timeout  # PyMySQL re-applies it to the socket before each read
    if seconds is None or (usual is not None and usual <= seconds):
        yield
        return
    conn._read_timeout = seconds
    try:
        yield
    finally:
        conn._read_timeout = usual


def _quick(conn: pymysql.connections.Connection):
    """Read the next answer with QUICK_ANSWER_TIMEOUT (if shorter than the read timeout)."""
    return _reading_within(conn, QUICK_ANSWER_TIMEOUT)


class Node:
    """A server plus this process's per-thread connections to it (no role: see the router)."""

    # A connection idle longer than this is pinged before use, so a server restart between
    # requests costs a reconnect instead of a failed write.
    ping_after_idle = 5.0

    def __init__(self, address: NodeAddress, settings: ConnectSettings):
        self.address = address
        self.settings = settings
        self._local = threading.local()
        self._checker: Node | None = None

    @property
    def name(self) -> str:
        return self.address.name

    def __repr__(self) -> str:
        return f"Node({self.name})"

    def for_checks(self) -> Node:
        """The same server with the health checks' short timeouts and its own connections."""
        if self._checker is None:
            self._checker = Node(self.address, self.settings.for_checks())
        return self._checker

    def _connection(self) -> pymysql.connections.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is not None and time.monotonic() - self._local.used_at > self.ping_after_idle:
            try:
                with _quick(conn):
                    conn.ping(reconnect=False)
            except (pymysql.err.Error, OSError) as exc:
                self.discard()
                if is_timeout(exc):
                    # Silent, not restarted: a new connection would only wait again.
                    raise NodeUnavailable(
                        self.name, exc, not_applied=True, unreachable=True
                    ) from exc
                conn = None
        if conn is None:
            conn = connect(self.address, self.settings)
            self._local.conn = conn
        self._local.used_at = time.monotonic()
        return conn

    def run(self, work: Callable[[Any], T], *, transaction: bool = False,
            read_timeout: float | None = None) -> T:
        """Run work(cursor) on this node; with transaction=True inside BEGIN/COMMIT.

        read_timeout: each answer of a non-transactional work within this many seconds
        (when shorter than the node's read timeout), e.g. a read that has somewhere else
        to go. Raises NodeUnavailable (with not_applied set as described there) on
        connection failures and on a read-only refusal; other database errors pass through.
        """
        conn = self._connection()  # NodeUnavailable(not_applied=True) if it cannot connect
        work_sent = False
        try:
            with conn.cursor() as cursor:
                if not transaction:
                    work_sent = True
                    with _reading_within(conn, read_timeout):
                        return work(cursor)
                # A BEGIN that fails leaves nothing behind: the work is not sent yet.
                with _quick(conn):
                    conn.begin()
                work_sent = True
                try:
                    result = work(cursor)
                except BaseException:
                    self._rollback(conn)
                    raise
                conn.commit()
                return result
        except (pymysql.err.OperationalError, pymysql.err.InterfaceError, OSError) as exc:
            self.discard()
            raise NodeUnavailable.from_error(self.name, exc, work_sent=work_sent) from exc

    def _rollback(self, conn: pymysql.connections.Connection) -> None:
        """Roll back after a failed statement, keeping that statement's error as the one raised."""
        try:
            conn.rollback()
        except (pymysql.err.Error, OSError):
            self.discard()  # broken: never reuse it (the server drops the transaction)

    def discard(self) -> None:
        """Forget this thread's connection (closing it if still open)."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None:
            with contextlib.suppress(Exception):  # already broken, nothing to report
                conn.close()

    def probe(self, timeout: float = 1.0) -> tuple[float, bool]:
        """Ask @@read_only on a fresh short-lived connection: (seconds taken, read_only)."""
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
                cursor.execute("SELECT @@global.read_only AS read_only")
                read_only = bool(int(cursor.fetchone()["read_only"]))
        except (pymysql.err.Error, OSError) as exc:
            raise NodeUnavailable(self.name, exc) from exc
        finally:
            with contextlib.suppress(Exception):
                conn.close()
        return time.monotonic() - started, read_only
