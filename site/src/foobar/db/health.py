"""Is a replica fit to serve reads? Asked at most once per interval per process.

SHOW SLAVE STATUS on every request would double the replica's query load, so each process
keeps the last answer for about a second. Only one thread refreshes a stale answer; the
others keep using the previous one meanwhile instead of queueing behind the check.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

from foobar.db.nodes import Node, NodeUnavailable


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


UNKNOWN = ReplicaStatus(healthy=False, reason="not checked yet")


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


def check_replica(node: Node, max_lag: float, clock: Callable[[], float] = time.monotonic):
    def show(cursor):
        cursor.execute("SHOW SLAVE STATUS")
        return list(cursor.fetchall())

    try:
        rows = node.run(show)
    except NodeUnavailable as exc:
        return ReplicaStatus(healthy=False, reason=f"check failed: {exc.cause}", checked_at=clock())
    return status_from_rows(rows, max_lag, clock())


class HealthCache:
    """Per-process cache of replica status, refreshed after `interval` seconds."""

    def __init__(
        self,
        check: Callable[[Node], ReplicaStatus],
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self._check = check
        self.interval = interval
        self._clock = clock
        self._status: dict[str, ReplicaStatus] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock_for(self, node: Node) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(node.name, threading.Lock())

    def get(self, node: Node) -> ReplicaStatus:
        cached = self._status.get(node.name)
        if cached is not None and self._clock() - cached.checked_at < self.interval:
            return cached
        lock = self._lock_for(node)
        # First look ever: wait for whoever is checking. Stale: never queue behind a check.
        if not lock.acquire(blocking=cached is None, timeout=5.0 if cached is None else -1):
            return cached or UNKNOWN
        try:
            cached = self._status.get(node.name)
            if cached is not None and self._clock() - cached.checked_at < self.interval:
                return cached
            status = self._check(node)
            self._status[node.name] = status
            return status
        finally:
            lock.release()

    def mark_failed(self, node: Node, reason: str) -> None:
        """A read just failed on this node: keep reads off it until the next check."""
        self._status[node.name] = ReplicaStatus(
            healthy=False, reason=reason, checked_at=self._clock()
        )

    def snapshot(self) -> dict[str, ReplicaStatus]:
        return dict(self._status)
