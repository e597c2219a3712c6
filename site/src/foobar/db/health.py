"""What each database node says it is, asked at most once per interval per process.

Roles come from the servers, not from the configuration: a node with @@read_only = 0 is
writable (a primary); a read-only node is a replica, and fit to serve reads only when
SHOW SLAVE STATUS shows both threads running and the lag within bounds. A planned
switchover flips these flags, so the app follows it without being told.

Asking on every request would double the servers' query load, so each process keeps the
last answers (one "round" over all nodes) for about a second. Only one thread refreshes a
stale round; the others keep using the previous one meanwhile instead of queueing behind
the check. A caller that has just seen a write refused or a connection fail can ask for a
round newer than that moment (`newer_than`); callers asking at the same time share it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, replace

from foobar.db.nodes import PRIMARY, REPLICA, Node, NodeUnavailable


@dataclass(frozen=True)
class ReplicaStatus:
    healthy: bool
    io_running: str | None = None
    sql_running: str | None = None
    lag: float | None = None
    reason: str | None = None
    checked_at: float = 0.0

    def as_dict(self) -> dict:
        data = asdict(self)
        data.pop("checked_at")
        return data


def status_from_rows(rows: list[dict], max_lag: float, now: float) -> ReplicaStatus:
    """Judge SHOW SLAVE STATUS rows: both threads running and lag at most max_lag."""
    if not rows:
        return ReplicaStatus(healthy=False, reason="not a replica", checked_at=now)
    io = ",".join(str(r.get("Slave_IO_Running")) for r in rows)
    sql = ",".join(str(r.get("Slave_SQL_Running")) for r in rows)
    lags = [r.get("Seconds_Behind_Master") for r in rows]
    lag = None if any(v is None for v in lags) else float(max(lags))
    reason = None
    if any(r.get("Slave_IO_Running") != "Yes" for r in rows):
        reason = "IO thread not running"
    elif any(r.get("Slave_SQL_Running") != "Yes" for r in rows):
        reason = "SQL thread not running"
    elif lag is None:
        reason = "lag unknown"
    elif lag > max_lag:
        reason = f"lag {lag:g}s > {max_lag:g}s"
    return ReplicaStatus(reason is None, io, sql, lag, reason, now)


@dataclass(frozen=True)
class NodeStatus:
    """One node as last seen: reachable?, read_only?, and (if read-only) its replication."""

    reachable: bool
    read_only: bool | None = None
    gtid_binlog_pos: str | None = None
    replication: ReplicaStatus | None = None  # only asked of read-only nodes
    error: str | None = None

    @property
    def role(self) -> str | None:
        """primary (writable), replica (read-only) or None (could not ask)."""
        if not self.reachable or self.read_only is None:
            return None
        return REPLICA if self.read_only else PRIMARY

    @property
    def serves_reads(self) -> bool:
        """A read-only node whose replication is healthy: may serve reads as a replica."""
        return self.role == REPLICA and self.replication is not None and self.replication.healthy

    def as_dict(self) -> dict:
        return {
            "role": self.role,
            "read_only": self.read_only,
            "gtid_binlog_pos": self.gtid_binlog_pos,
            "replication": self.replication.as_dict() if self.replication else None,
            "error": self.error,
        }


UNKNOWN = NodeStatus(reachable=False, error="not checked yet")


def _ask_role(cursor) -> dict:
    cursor.execute(
        "SELECT @@global.read_only AS read_only, @@global.gtid_binlog_pos AS gtid_binlog_pos"
    )
    return cursor.fetchone()


def _show_slave_status(cursor) -> list[dict]:
    cursor.execute("SHOW SLAVE STATUS")
    return list(cursor.fetchall())


def check_node(
    node: Node, max_lag: float, clock: Callable[[], float] = time.monotonic
) -> NodeStatus:
    """@@read_only (and @@gtid_binlog_pos); for a read-only node also SHOW SLAVE STATUS."""
    try:
        try:
            row = node.run(_ask_role)
        except NodeUnavailable as exc:
            if exc.not_applied:  # could not even connect
                raise
            # A kept connection broke (e.g. the server restarted): ask once more on a
            # fresh one rather than call a healthy node unreachable for a whole interval.
            row = node.run(_ask_role)
    except NodeUnavailable as exc:
        return NodeStatus(reachable=False, error=f"check failed: {exc.cause}")
    read_only = bool(int(row["read_only"]))
    position = row.get("gtid_binlog_pos") or None
    if not read_only:
        return NodeStatus(reachable=True, read_only=False, gtid_binlog_pos=position)
    try:
        rows = node.run(_show_slave_status)
    except NodeUnavailable as exc:  # e.g. no SLAVE MONITOR right: reachable, but not for reads
        replication = ReplicaStatus(
            healthy=False, reason=f"check failed: {exc.cause}", checked_at=clock()
        )
    else:
        replication = status_from_rows(rows, max_lag, clock())
    return NodeStatus(True, True, position, replication)


@dataclass(frozen=True)
class Snapshot:
    """The statuses from one round of checks over all nodes."""

    statuses: Mapping[str, NodeStatus]
    started_at: float
    round: int

    def get(self, node: Node) -> NodeStatus:
        return self.statuses.get(node.name, UNKNOWN)


EMPTY = Snapshot({}, float("-inf"), 0)


class HealthCache:
    """Per-process cache of every node's status, refreshed after `interval` seconds."""

    def __init__(
        self,
        check: Callable[[Node], NodeStatus],
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        first_wait: float = 5.0,
    ):
        self._check = check
        self.interval = interval
        self._clock = clock
        self._first_wait = first_wait
        self._current: Snapshot | None = None
        self._checking = threading.Lock()  # held for a whole round of checks
        self._swap = threading.Lock()  # held only to replace _current

    def _fresh(self, snap: Snapshot | None, newer_than: float | None) -> bool:
        if snap is None:
            return False
        if newer_than is not None:
            return snap.started_at > newer_than
        return self._clock() - snap.started_at < self.interval

    def get(
        self,
        nodes: Iterable[Node],
        *,
        newer_than: float | None = None,
        wait: float | None = None,
    ) -> Snapshot:
        """The current round; a new one if stale, or if it did not start after newer_than.

        Without newer_than a stale round is returned as is while another thread refreshes
        it (only the very first look waits). With newer_than the caller waits up to `wait`
        seconds for a round that started after that moment, its own or another thread's.
        """
        current = self._current
        if self._fresh(current, newer_than):
            return current
        if current is None or newer_than is not None:
            timeout = self._first_wait if wait is None else max(wait, 0.0)
            got = self._checking.acquire(timeout=timeout)
        else:
            got = self._checking.acquire(blocking=False)
        if not got:
            return current or self._current or EMPTY
        try:
            current = self._current
            if self._fresh(current, newer_than):
                return current
            started = self._clock()
            statuses = {node.name: self._check(node) for node in nodes}
            snap = Snapshot(statuses, started, (current.round if current else 0) + 1)
            with self._swap:
                self._current = snap
            return snap
        finally:
            self._checking.release()

    def mark_failed(self, node: Node, reason: str) -> None:
        """A read just failed on this node: keep reads off it until the next round."""
        with self._swap:
            current = self._current
            if current is None or node.name not in current.statuses:
                return
            benched = replace(
                current.statuses[node.name],
                replication=ReplicaStatus(healthy=False, reason=reason, checked_at=self._clock()),
            )
            self._current = Snapshot(
                {**current.statuses, node.name: benched}, current.started_at, current.round
            )

    def snapshot(self) -> Snapshot:
        return self._current or EMPTY
