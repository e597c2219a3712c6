"""What each database node says it is, asked about once per interval per process.

Roles come from the servers, not from the configuration: a node with @@read_only = 0 is
writable (a primary); a read-only node is a replica, and fit to serve reads only when
SHOW SLAVE STATUS shows both threads running and the lag within bounds. A planned
switchover flips these flags, so the app follows it without being told.

Asking on every request would double the servers' query load, so each process keeps the
last answers for about a second. In production (`background=True`) one thread per node
asks its node once per interval, on a connection of its own with short timeouts
(nodes.CHECK_TIMEOUT), and requests only ever read the latest answers: a node that went
silent costs its checker a timeout, never a request. A request that finds a node dead
first (a connect or read that timed out) marks it down at once (`mark_down`), so the
requests after it skip it instead of each waiting out the same timeout; its checker is
woken to confirm or clear that within milliseconds. With a board (foobar.db.marks) the
mark reaches the machine's other processes too.

A caller that has just seen a write refused or a connection fail can ask for answers newer
than that moment (`newer_than`): the checkers are woken and the caller waits for every node
to be asked again, except nodes already known to be down, whose silence would only cost
the caller their timeout (their checkers keep asking and report them back when they
answer). Callers asking at the same time share the same checks.

Without `background` (tests with a fake clock) the same answers are gathered by the caller
itself, in rounds over all nodes: only one thread refreshes a stale round; the others keep
using the previous one meanwhile.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace

from foobar.db.marks import DownBoard
from foobar.db.nodes import PRIMARY, REPLICA, Node, NodeUnavailable

log = logging.getLogger(__name__)


NOT_A_REPLICA = "not a replica"


@dataclass(frozen=True)
class ReplicaStatus:
    healthy: bool
    io_running: str | None = None
    sql_running: str | None = None
    lag: float | None = None
    reason: str | None = None
    checked_at: float = 0.0
    sql_error: bool = False  # the SQL thread stopped on an error (Last_SQL_Errno)

    def as_dict(self) -> dict:
        data = asdict(self)
        data.pop("checked_at")
        return data


def status_from_rows(rows: list[dict], max_lag: float, now: float) -> ReplicaStatus:
    """Judge SHOW SLAVE STATUS rows: both threads running and lag at most max_lag."""
    if not rows:
        return ReplicaStatus(healthy=False, reason=NOT_A_REPLICA, checked_at=now)
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
    sql_error = any(int(r.get("Last_SQL_Errno") or 0) != 0 for r in rows)
    return ReplicaStatus(reason is None, io, sql, lag, reason, now, sql_error)


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

    @property
    def serves_stale_reads(self) -> bool:
        """A read-only node applying everything it has received (SQL thread running),
        whatever its IO thread says, or one whose replication was stopped or reset without
        an error (a failover cluster repointing its replicas to the node it promotes: the
        agent applies the relay log first), or the primary a switchover just demoted. Only
        while no node is writable: then nothing newer can be written anywhere, and its data
        is as fresh as there is. A replica whose
        SQL thread stopped on an error may be far behind: never."""
        replication = self.replication
        if self.role != REPLICA or replication is None or replication.sql_error:
            return False
        if replication.sql_running is None:
            return replication.reason == NOT_A_REPLICA
        return all(state in ("Yes", "No") for state in replication.sql_running.split(","))

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
            if exc.not_applied or exc.unreachable:  # no connection, or silence
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
    except NodeUnavailable as exc:
        if exc.unreachable:  # went silent between the two questions
            return NodeStatus(reachable=False, error=f"check failed: {exc.cause}")
        # e.g. no SLAVE MONITOR right: reachable, but not for reads
        replication = ReplicaStatus(
            healthy=False, reason=f"check failed: {exc.cause}", checked_at=clock()
        )
    else:
        replication = status_from_rows(rows, max_lag, clock())
    return NodeStatus(True, True, position, replication)


@dataclass(frozen=True)
class Snapshot:
    """Every node's latest status, and when each was asked for."""

    statuses: Mapping[str, NodeStatus]
    started_at: float  # when the oldest status in it was asked for (a round's start)
    round: int  # grows with every change
    checked_at: Mapping[str, float] = field(default_factory=dict)
    # The last node any check of this process found writable, even in a snapshot no request
    # looked at: a worker idle through a switchover must still know which node was the
    # primary when that one dies (it is gone, not a switchover to wait for).
    last_writable: str | None = None

    def get(self, node: Node) -> NodeStatus:
        return self.statuses.get(node.name, UNKNOWN)

    def covers(self, nodes: Iterable[Node]) -> bool:
        return all(node.name in self.statuses for node in nodes)

    def fresh_since(self, moment: float, nodes: Iterable[Node]) -> bool:
        """Every node asked again after `moment`, except nodes known to be down."""
        for node in nodes:
            status = self.statuses.get(node.name)
            if status is None:
                return False
            if self.checked_at.get(node.name, float("-inf")) <= moment and status.reachable:
                return False
        return True

    def replaced(self, node: Node, status: NodeStatus, checked_at: float) -> Snapshot:
        checked = {**self.checked_at, node.name: checked_at}
        last = node.name if status.role == PRIMARY else self.last_writable
        return Snapshot(
            {**self.statuses, node.name: status}, min(checked.values()), self.round + 1, checked,
            last,
        )


EMPTY = Snapshot({}, float("-inf"), 0, {})


class HealthCache:
    """Per-process cache of every node's status, refreshed every `interval` seconds."""

    def __init__(
        self,
        check: Callable[[Node], NodeStatus],
        interval: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        first_wait: float = 5.0,
        *,
        background: bool = False,
        min_gap: float = 0.02,
        board: DownBoard | None = None,
    ):
        self._check = check
        self.board = board  # marks shared with this machine's other processes (background)
        self.interval = interval
        self._clock = clock
        self._first_wait = first_wait
        self.background = background
        self._min_gap = min_gap  # between two checks of one node, however often woken
        self._current: Snapshot | None = None
        self._checking = threading.Lock()  # inline: held for a whole round of checks
        self._changed = threading.Condition()  # guards _current; notified on each change
        self._checkers: dict[str, _Checker] = {}
        self._starting = threading.Lock()
        self._pid: int | None = None
        self._closed = False

    # -- reading -----------------------------------------------------------------------

    def get(
        self,
        nodes: Iterable[Node],
        *,
        newer_than: float | None = None,
        wait: float | None = None,
    ) -> Snapshot:
        """The latest statuses; with newer_than, wait up to `wait` s for newer ones.

        Only the very first look waits without newer_than (for every node's first answer,
        up to first_wait seconds).
        """
        nodes = list(nodes)
        if self.background:
            return self._get_background(nodes, newer_than, wait)
        return self._get_inline(nodes, newer_than, wait)

    def snapshot(self) -> Snapshot:
        return self._current or EMPTY

    # -- what requests learn -----------------------------------------------------------

    def mark_failed(self, node: Node, reason: str) -> None:
        """A read just failed on this node: keep reads off it until its next check."""
        with self._changed:
            current = self._current
            if current is None or node.name not in current.statuses:
                return
            now = self._clock()
            benched = replace(
                current.statuses[node.name],
                replication=ReplicaStatus(healthy=False, reason=reason, checked_at=now),
            )
            self._swap(current.replaced(node, benched, now))

    def mark_down(self, node: Node, reason: str) -> None:
        """A request found this node dead (timeout, no connection): everyone skips it now.

        Its checker is woken: a node that merely had a slow moment is back within
        milliseconds, a dead one stays down until it answers again.
        """
        now = self._clock()
        with self._changed:
            current = self._current
            if current is None or node.name not in current.statuses:
                return
            self._swap(current.replaced(node, NodeStatus(reachable=False, error=reason), now))
        if self.background and self.board is not None:
            self.board.post(node.name, now)
        checker = self._checkers.get(node.name)
        if checker is not None:
            checker.kick()

    def _absorb(self, nodes: list[Node]) -> None:
        """Take the marks another process of this machine posted since this one last heard
        from a node: down at once here too, and its checker woken to see for itself."""
        board = self.board
        if board is None:
            return
        for node in nodes:
            moment = board.marked_at(node.name)
            if moment is None:
                continue
            with self._changed:
                current = self._current
                if current is None:
                    return
                status = current.statuses.get(node.name)
                if (status is None or not status.reachable
                        or current.checked_at.get(node.name, float("-inf")) >= moment):
                    continue
                error = "found silent by another process of this machine"
                self._swap(current.replaced(node, NodeStatus(reachable=False, error=error),
                                            moment))
            checker = self._checkers.get(node.name)
            if checker is not None:
                checker.kick()

    def close(self) -> None:
        """Stop the background checkers (they also stop once the cache is garbage)."""
        self._closed = True
        for checker in list(self._checkers.values()):
            checker.kick()

    # -- inline rounds (no background threads) -----------------------------------------

    def _get_inline(
        self, nodes: list[Node], newer_than: float | None, wait: float | None
    ) -> Snapshot:
        current = self._current
        if self._fresh_round(current, newer_than):
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
            if self._fresh_round(current, newer_than):
                return current
            started = self._clock()
            statuses = {node.name: self._check(node) for node in nodes}
            snap = Snapshot(
                statuses,
                started,
                (current.round if current else 0) + 1,
                dict.fromkeys(statuses, started),
                next((name for name, st in statuses.items() if st.role == PRIMARY),
                     current.last_writable if current else None),
            )
            with self._changed:
                self._swap(snap)
            return snap
        finally:
            self._checking.release()

    def _fresh_round(self, snap: Snapshot | None, newer_than: float | None) -> bool:
        if snap is None:
            return False
        if newer_than is not None:
            return snap.started_at > newer_than
        return self._clock() - snap.started_at < self.interval

    # -- background checkers -----------------------------------------------------------

    def _get_background(
        self, nodes: list[Node], newer_than: float | None, wait: float | None
    ) -> Snapshot:
        self._start(nodes)
        self._absorb(nodes)
        current = self._current
        if current is not None and current.covers(nodes):
            if newer_than is None or current.fresh_since(newer_than, nodes):
                return current
        timeout = self._first_wait if wait is None else max(wait, 0.0)
        if newer_than is None:
            ready = lambda: self._current is not None and self._current.covers(nodes)  # noqa: E731
        else:
            for checker in list(self._checkers.values()):
                checker.kick()
            ready = lambda: (  # noqa: E731
                self._current is not None and self._current.fresh_since(newer_than, nodes)
            )
        with self._changed:
            self._changed.wait_for(ready, timeout=timeout)
            return self._current or EMPTY

    def _start(self, nodes: list[Node]) -> None:
        """One checker thread per node, in this process (threads do not survive a fork)."""
        pid = os.getpid()
        checkers = self._checkers
        if self._pid == pid and len(checkers) == len(nodes):
            if all(c.alive for c in checkers.values()):
                return
        with self._starting:
            if self._pid != pid:
                self._checkers = {}
                self._pid = pid
            for node in nodes:
                checker = self._checkers.get(node.name)
                if checker is None or not checker.alive:
                    checker = _Checker(self, node)
                    self._checkers[node.name] = checker
                    checker.start()

    def _check_one(self, node: Node) -> NodeStatus:
        try:
            return self._check(node)
        except Exception as exc:  # a checker must outlive any surprise from a server
            log.exception("health check of %s failed", node.name)
            return NodeStatus(reachable=False, error=f"check failed: {exc!r}")

    def _publish(self, node: Node, status: NodeStatus, started: float) -> None:
        with self._changed:
            current = self._current or EMPTY
            if current.checked_at.get(node.name, float("-inf")) > started:
                return  # a request learnt something newer meanwhile (mark_down/mark_failed)
            self._swap(current.replaced(node, status, started))

    def _swap(self, snap: Snapshot) -> None:
        """Replace the current snapshot; the caller holds self._changed."""
        self._current = snap
        self._changed.notify_all()


class _Checker:
    """Asks one node every interval, or sooner when woken; holds only a weak reference to
    its cache, so a cache nobody uses any more stops its threads."""

    def __init__(self, cache: HealthCache, node: Node):
        self._cache = weakref.ref(cache)
        self.node = node
        self._kicked = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name=f"foobar-health {node.name}", daemon=True
        )

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def start(self) -> None:
        self._thread.start()

    def kick(self) -> None:
        self._kicked.set()

    def _run(self) -> None:
        while True:
            cache = self._cache()
            if cache is None or cache._closed:
                return
            clock, interval, min_gap = cache._clock, cache.interval, cache._min_gap
            started = clock()
            status = cache._check_one(self.node)
            cache._publish(self.node, status, started)
            del cache  # not kept alive by a sleeping thread
            self._kicked.wait(timeout=max(0.0, started + interval - clock()))
            self._kicked.clear()
            pause = started + min_gap - clock()
            if pause > 0:
                time.sleep(pause)
