"""Where each statement goes: writes to the primary, reads to a fresh-enough replica.

The configured addresses (FOOBAR_DB_PRIMARY + FOOBAR_DB_REPLICAS) are only the set of
nodes; which of them is the primary is what the servers say (foobar.db.health): the
writable node (read_only = 0). If several are writable (split brain) the configured
primary wins, else the first in configuration order, and the event is counted. If none
is writable (the middle of a switchover), work that needs the primary waits for one.

Reads prefer a healthy read-only replica (both replication threads running, lag within
bounds), round-robin, and quietly move to the primary whenever no replica fits, a replica
fails mid-read, or the replica cannot show the client's own last write in time.

Work on the primary is retried, on whatever node is the primary by then, for up to
`write_retry_seconds`: a read after any failure (reads can be repeated), a write only when
it certainly did not take effect: refused with error 1290 (read-only) or failed before
anything was sent. A write that failed in any other way may have committed and is never
repeated: the caller gets the error (a 503).
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from foobar.db import gtid
from foobar.db.health import HealthCache, NodeStatus, Snapshot, check_node
from foobar.db.nodes import PRIMARY, REPLICA, Node, NodeUnavailable

T = TypeVar("T")

log = logging.getLogger(__name__)

# Pause between attempts on the primary after the first (immediate) retry.
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 0.1


class RouterEvents:
    """Hooks for metrics; the default does nothing so the library stands alone."""

    def query(self, role: str, kind: str) -> None:
        pass

    def gtid_wait(self, outcome: str) -> None:
        pass

    def fallback(self, reason: str) -> None:
        pass

    def retry(self, kind: str, reason: str) -> None:
        """Work on the primary is tried again (reason: read_only, unavailable, no_primary)."""

    def multiple_writable(self, nodes: Sequence[str]) -> None:
        """A round of checks found more than one writable node (split brain)."""


class NoPrimary(NodeUnavailable):
    """No node is writable (e.g. mid-switchover) and none became so within the retry budget."""

    def __init__(self, detail: str):
        super().__init__("no primary", RuntimeError(detail), not_applied=True)


@dataclass(frozen=True)
class RoleView:
    """Roles as one round of checks saw them."""

    primary: Node | None
    replicas: tuple[Node, ...]  # read-only and fit to serve reads
    writable: tuple[Node, ...]
    snapshot: Snapshot

    def status(self, node: Node) -> NodeStatus:
        return self.snapshot.get(node)


@dataclass(frozen=True)
class Routed(Generic[T]):
    value: T
    node: Node
    role: str  # the role the node had when it answered: primary or replica


@dataclass(frozen=True)
class Written(Routed[T]):
    gtid: str | None = None


class Router:
    def __init__(
        self,
        primary: Node,
        replicas: Sequence[Node] = (),
        *,
        max_lag: float = 1.0,
        gtid_wait_timeout: float = 0.5,
        check_interval: float = 1.0,
        write_retry_seconds: float = 5.0,
        events: RouterEvents | None = None,
        health: HealthCache | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ):
        self.configured_primary = primary  # a hint: preferred if several are writable
        self.nodes: list[Node] = []
        for node in (primary, *replicas):
            if all(node.name != known.name for known in self.nodes):
                self.nodes.append(node)
        self.max_lag = max_lag
        self.gtid_wait_timeout = gtid_wait_timeout
        self.write_retry_seconds = write_retry_seconds
        self.events = events or RouterEvents()
        self._clock = clock
        self._sleep = sleep
        self.health = health or HealthCache(
            lambda node: check_node(node, self.max_lag, clock),
            interval=check_interval,
            clock=clock,
        )
        self._turn = itertools.count()
        self._view: RoleView | None = None
        self._judging = threading.Lock()
        self._judged_round = 0
        self._last_primary: str | None = None

    # -- roles -----------------------------------------------------------------------

    def view(self, *, newer_than: float | None = None, wait: float | None = None) -> RoleView:
        """Current roles (cached ~1 s); newer_than: from a round started after that moment."""
        snap = self.health.get(self.nodes, newer_than=newer_than, wait=wait)
        view = self._view
        if view is not None and view.snapshot is snap:
            return view
        view = self._judge(snap)
        self._view = view
        return view

    def refresh(self) -> RoleView:
        """Roles as the servers say them right now, bypassing the cache."""
        return self.view(newer_than=self._clock())

    def _judge(self, snap: Snapshot) -> RoleView:
        writable = tuple(n for n in self.nodes if snap.get(n).role == PRIMARY)
        # self.nodes starts with the configured primary: it wins if it is writable.
        primary = writable[0] if writable else None
        replicas = tuple(n for n in self.nodes if n is not primary and snap.get(n).serves_reads)
        view = RoleView(primary, replicas, writable, snap)
        with self._judging:
            if snap.round > self._judged_round:  # once per round, not per benching
                self._judged_round = snap.round
                if len(writable) > 1:
                    names = [n.name for n in writable]
                    log.warning("several database nodes are writable: %s; writing to %s",
                                ", ".join(names), primary.name)
                    self.events.multiple_writable(names)
                name = primary.name if primary else None
                if name != self._last_primary:
                    first = snap.round == 1 and self._last_primary is None
                    log.log(logging.INFO if first else logging.WARNING,
                            "database primary is now %s (was %s)", name, self._last_primary)
                    self._last_primary = name
        return view

    def healthy_replicas(self) -> list[Node]:
        return list(self.view().replicas)

    def choose_replica(self, view: RoleView | None = None) -> Node | None:
        """Next healthy replica in round-robin order, or None to use the primary."""
        healthy = (view or self.view()).replicas
        if not healthy:
            return None
        return healthy[next(self._turn) % len(healthy)]

    # -- reads -----------------------------------------------------------------------

    def read(self, work: Callable[[Any], T], *, min_gtid: str | None = None) -> Routed[T]:
        """Run a read-only work(cursor); min_gtid is the client's last write, if any."""
        view = self.view()
        replica = self.choose_replica(view)
        if replica is None:
            if len(self.nodes) > 1:
                self.events.fallback("no_healthy_replica")
            return self._read_on_primary(work, view)
        try:
            if min_gtid:
                # GTIDs are global: a position written on a former primary is waited for
                # the same way on any replica, whichever node it replicates from now.
                caught_up = replica.run(
                    lambda cursor: gtid.wait_for(cursor, min_gtid, self.gtid_wait_timeout)
                )
                self.events.gtid_wait("caught_up" if caught_up else "timeout")
                if not caught_up:
                    self.events.fallback("gtid_wait_timeout")
                    return self._read_on_primary(work, view)
            value = replica.run(work)
        except NodeUnavailable as exc:
            self.health.mark_failed(replica, f"read failed: {exc.cause}")
            self.events.fallback("replica_error")
            return self._read_on_primary(work, view)
        self.events.query(REPLICA, "read")
        return Routed(value, replica, REPLICA)

    def _read_on_primary(self, work: Callable[[Any], T], view: RoleView) -> Routed[T]:
        # The primary has applied every acknowledged write (a switchover waits for that
        # before promoting), so it needs no GTID wait.
        value, node = self._on_primary(work, view, transaction=False)
        self.events.query(PRIMARY, "read")
        return Routed(value, node, PRIMARY)

    # -- writes ----------------------------------------------------------------------

    def write(self, work: Callable[[Any], T]) -> Written[T]:
        """Run work(cursor) in a transaction on the primary and note the GTID it committed."""
        value, node = self._on_primary(work, self.view(), transaction=True)
        self.events.query(PRIMARY, "write")
        try:
            # Same connection, right after COMMIT: the GTID of exactly this transaction.
            position = node.run(gtid.last_gtid)
        except NodeUnavailable:
            position = None  # committed anyway; the client just loses read-your-writes
        return Written(value, node, PRIMARY, position)

    def _on_primary(
        self, work: Callable[[Any], T], view: RoleView, *, transaction: bool
    ) -> tuple[T, Node]:
        """Run work on the primary of the moment, retrying what is safe to retry.

        After a failure the roles are re-read at once (bypassing the cache) and the work is
        tried again on the primary they name, immediately the first time, then every
        BACKOFF_FIRST..BACKOFF_MAX seconds, for up to write_retry_seconds in all.
        """
        kind = "write" if transaction else "read"
        deadline = self._clock() + self.write_retry_seconds
        delay = 0.0
        while True:
            node = view.primary
            if node is None:
                error: NodeUnavailable = NoPrimary(self._no_primary_detail(view))
                reason = "no_primary"
                seen_at = view.snapshot.started_at
            else:
                try:
                    return node.run(work, transaction=transaction), node
                except NodeUnavailable as exc:
                    # A read can always be repeated; a write only if it certainly did not
                    # take effect (refused as read-only, or never sent).
                    if transaction and not exc.not_applied:
                        raise
                    error = exc
                    reason = "read_only" if exc.read_only else "unavailable"
                    seen_at = self._clock()
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise error
            self.events.retry(kind, reason)
            if delay:
                self._sleep(min(delay, remaining))
            delay = min(max(2 * delay, BACKOFF_FIRST), BACKOFF_MAX)
            view = self.view(newer_than=seen_at, wait=max(deadline - self._clock(), 0.0))

    def _no_primary_detail(self, view: RoleView) -> str:
        seen = []
        for node in self.nodes:
            status = view.status(node)
            seen.append(f"{node.name} {status.role or 'unreachable'}")
        return f"no database node is writable ({', '.join(seen)})"
