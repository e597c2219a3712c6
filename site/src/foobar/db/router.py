"""Where each statement goes: writes to the primary, reads to a fresh-enough replica.

The configured addresses (FOOBAR_DB_PRIMARY + FOOBAR_DB_REPLICAS) are only the set of
nodes; which of them is the primary is what the servers say (foobar.db.health): the
writable node (read_only = 0). If several are writable (split brain) the configured
primary wins, else the first in configuration order, and the event is counted. If none
is writable, either a switchover is under way (every node answers, all read-only: work
that needs the primary waits for one) or the primary is gone (the last writable node does
not answer: work that needs it fails at once, since a failover takes many seconds).

Reads prefer a healthy read-only replica (both replication threads running, lag within
bounds), round-robin, and quietly move to another replica or the primary whenever no
replica fits, a replica fails mid-read, or the replica cannot show the client's own last
write in time. While no node is writable (the primary gone, or a switchover under way),
read-only nodes still applying what they have keep serving reads, the replicas whose IO
thread lost the primary and the demoted primary included: nothing newer can be written
anywhere meanwhile, and a read that waited for a primary instead would hold an app thread.

Work on the primary is retried, on whatever node is the primary by then, for up to
`write_retry_seconds`: a read after any failure (reads can be repeated); a write when it
certainly did not take effect (refused with error 1290, read-only, or failed before
anything was sent), or after any failure if the caller says it is idempotent (it carries a
key that makes a second run return the first one's result; foobar.messages). Any other
write that failed may have committed and is not repeated: the caller gets the error (503).

A request that the proxies in front may send again while it is still running (they replay
a read or a keyed write that has not been answered within their bound, to get past a server
that went silent) must not wait longer than that bound: held longer, every held request is
replayed, each replay is held too, and a switchover of a few seconds multiplies the work
waiting in the app until no thread is left for anything else (health checks included). Such
a request sets a shorter budget for itself (`limit_retries`); when it runs out the caller
gets NoPrimary (a 503 with Retry-After, nothing applied) and the proxies send it again, one
attempt after the other instead of side by side.

A node that times out or cannot be connected to is marked down in the health cache at once,
so the requests after the one that found out skip it instead of each paying the timeout.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from foobar.db import gtid
from foobar.db.health import UNKNOWN, HealthCache, NodeStatus, Snapshot, check_node
from foobar.db.marks import DownBoard
from foobar.db.nodes import PRIMARY, REPLICA, Node, NodeUnavailable

T = TypeVar("T")

log = logging.getLogger(__name__)

# Pause between attempts on the primary after the first (immediate) retry.
BACKOFF_FIRST = 0.05
BACKOFF_MAX = 0.1

# This request's own limit on waiting for (and retrying on) the primary, if any: one value
# per thread (a gunicorn gthread worker runs one request at a time per thread).
_retry_limit: ContextVar[float | None] = ContextVar("foobar_retry_limit", default=None)


def limit_retries(seconds: float | None) -> None:
    """From now on in this thread (this request), work on the primary waits and retries at
    most `seconds` (None: the router's write_retry_seconds), whichever is shorter."""
    _retry_limit.set(seconds)


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
        """Checks found more than one writable node (split brain); at most once a second."""

    def stale_read(self) -> None:
        """A read was served by a replica that lost its primary, because none is reachable."""


class NoPrimary(NodeUnavailable):
    """No node is writable (e.g. mid-switchover) and none became so within the retry budget."""

    def __init__(self, detail: str):
        super().__init__("no primary", RuntimeError(detail), not_applied=True)


@dataclass(frozen=True)
class RoleView:
    """Roles as the latest checks saw them."""

    primary: Node | None
    replicas: tuple[Node, ...]  # read-only and fit to serve reads
    writable: tuple[Node, ...]
    snapshot: Snapshot
    # No node writable, and the last one that was does not answer (or, before any was
    # seen, some node does not): a failure, not a switchover.
    primary_gone: bool = False
    # While no node is writable: read-only nodes still applying what they have.
    stale_replicas: tuple[Node, ...] = ()

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
        replica_read_timeout: float = 0.5,
        check_interval: float = 1.0,
        write_retry_seconds: float = 5.0,
        events: RouterEvents | None = None,
        health: HealthCache | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        background_checks: bool | None = None,
        down_board: DownBoard | None = None,
    ):
        """background_checks: health checks in background threads (the default with the
        real clock); with an injected clock they run in the caller, deterministically.
        down_board: dead-node marks shared with this machine's other processes."""
        self.configured_primary = primary  # a hint: preferred if several are writable
        self.nodes: list[Node] = []
        for node in (primary, *replicas):
            if all(node.name != known.name for known in self.nodes):
                self.nodes.append(node)
        self.max_lag = max_lag
        self.gtid_wait_timeout = gtid_wait_timeout
        self.replica_read_timeout = replica_read_timeout
        self.write_retry_seconds = write_retry_seconds
        self.events = events or RouterEvents()
        self._clock = clock
        self._sleep = sleep
        if background_checks is None:
            background_checks = clock is time.monotonic
        self.health = health or HealthCache(
            self._check,
            interval=check_interval,
            clock=clock,
            background=background_checks,
            board=down_board,
        )
        self._turn = itertools.count()
        self._view: RoleView | None = None
        self._judging = threading.Lock()
        self._judged_round = 0
        self._last_primary: str | None = None
        self._last_writable: str | None = None  # survives a moment without a primary
        self._split_counted_at: float | None = None
        self._had_primary = False

    def _check(self, node: Node) -> NodeStatus:
        # Real nodes are asked on connections of their own with short timeouts.
        for_checks = getattr(node, "for_checks", None)
        return check_node(for_checks() if for_checks else node, self.max_lag, self._clock)

    def close(self) -> None:
        """Stop the background health checks (a process that exits needs not call this)."""
        self.health.close()

    # -- roles -----------------------------------------------------------------------

    def view(self, *, newer_than: float | None = None, wait: float | None = None) -> RoleView:
        """Current roles (at most ~1 s old); newer_than: from answers asked for after that
        moment (nodes known to be down excepted), waiting up to `wait` seconds for them."""
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
        with self._judging:
            if primary is not None:
                self._last_writable = primary.name
            elif snap.last_writable is not None:
                # the checks saw one writable since this process last judged
                self._last_writable = snap.last_writable
            last = self._last_writable
            if snap.round > self._judged_round:  # once per change, not per look
                self._judged_round = snap.round
                self._note(snap, primary, writable)
        gone = primary is None and (
            not snap.statuses.get(last, UNKNOWN).reachable
            if last is not None
            else any(not snap.get(n).reachable for n in self.nodes)
        )
        stale = tuple(n for n in self.nodes
                      if primary is None and snap.get(n).serves_stale_reads)
        return RoleView(primary, replicas, writable, snap, gone, stale)

    def _note(self, snap: Snapshot, primary: Node | None, writable: tuple[Node, ...]) -> None:
        """Log and count what changed; the caller holds self._judging."""
        if len(writable) > 1:
            now = self._clock()
            last = self._split_counted_at
            if last is None or now - last >= self.health.interval:
                names = [n.name for n in writable]
                log.warning("several database nodes are writable: %s; writing to %s",
                            ", ".join(names), primary.name)
                self.events.multiple_writable(names)
                self._split_counted_at = now
        else:
            self._split_counted_at = None
        name = primary.name if primary else None
        if name != self._last_primary:
            first = self._last_primary is None and not self._had_primary
            log.log(logging.INFO if first else logging.WARNING,
                    "database primary is now %s (was %s)", name, self._last_primary)
            self._last_primary = name
        self._had_primary = self._had_primary or primary is not None

    def healthy_replicas(self) -> list[Node]:
        return list(self.view().replicas)

    def choose_replica(self, view: RoleView | None = None, skip=()) -> Node | None:
        """Next replica in round-robin order (skipping `skip`), or None to use the primary."""
        view = view or self.view()
        candidates = [n for n in view.replicas or view.stale_replicas if n not in skip]
        if not candidates:
            return None
        return candidates[next(self._turn) % len(candidates)]

    def _failed(self, node: Node, exc: NodeUnavailable, *, bench: bool = False) -> None:
        """Tell the health cache what a request just learnt about a node."""
        if exc.unreachable:
            self.health.mark_down(node, f"unreachable: {exc.cause}")
        elif bench:
            self.health.mark_failed(node, f"read failed: {exc.cause}")

    # -- reads -----------------------------------------------------------------------

    def read(self, work: Callable[[Any], T], *, min_gtid: str | None = None) -> Routed[T]:
        """Run a read-only work(cursor); min_gtid is the client's last write, if any."""
        view = self.view()
        tried: list[Node] = []
        primary_failed = False
        while True:
            replica = self.choose_replica(view, tried)
            if replica is None:
                if not tried and len(self.nodes) > 1:
                    self.events.fallback("no_healthy_replica")
                try:
                    return self._read_on_primary(work, view)
                except NodeUnavailable:
                    # The primary died after the last check: its replicas lost it too (so
                    # none was fit) but still hold everything it acknowledged. Once the
                    # checks say it is gone they serve reads (stale_replicas), as they do
                    # for every request after this one.
                    view = self.view()
                    if primary_failed or not view.primary_gone or not any(
                        n not in tried for n in view.stale_replicas
                    ):
                        raise
                    primary_failed = True
                    self.events.fallback("primary_gone")
                    continue
            stale = replica not in view.replicas
            try:
                if min_gtid:
                    # GTIDs are global: a position written on a former primary is waited for
                    # the same way on any replica, whichever node it replicates from now. A
                    # replica that lost its primary still applies what it received (with
                    # semi-sync: every acknowledged write), and this process may be the last
                    # to see that the primary is back (the client's write says it is): the
                    # same wait.
                    timeout = self.gtid_wait_timeout
                    caught_up = replica.run(
                        lambda cursor, timeout=timeout: gtid.wait_for(cursor, min_gtid, timeout),
                        read_timeout=timeout + self.replica_read_timeout,
                    )
                    self.events.gtid_wait("caught_up" if caught_up else "timeout")
                    if not caught_up:
                        self.events.fallback("gtid_wait_timeout")
                        return self._read_on_primary(work, view)
                # A replica that went silent (its link cut, its machine gone) costs this read
                # replica_read_timeout, not the full read timeout: the read moves on.
                value = replica.run(work, read_timeout=self.replica_read_timeout)
            except NodeUnavailable as exc:
                self._failed(replica, exc, bench=True)
                self.events.fallback("replica_error")
                tried.append(replica)
                view = self.view()
                continue
            if stale:
                self.events.stale_read()
            self.events.query(REPLICA, "read")
            return Routed(value, replica, REPLICA)

    def _read_on_primary(self, work: Callable[[Any], T], view: RoleView) -> Routed[T]:
        # The primary has applied every acknowledged write (a switchover waits for that
        # before promoting), so it needs no GTID wait.
        value, node = self._on_primary(work, view, transaction=False)
        self.events.query(PRIMARY, "read")
        return Routed(value, node, PRIMARY)

    # -- writes ----------------------------------------------------------------------

    def write(self, work: Callable[[Any], T], *, idempotent: bool = False) -> Written[T]:
        """Run work(cursor) in a transaction on the primary and note the GTID it committed.

        idempotent: running the work twice has the effect of running it once (it records
        a key in the same transaction and returns the first run's result when the key is
        there already), so it may be repeated after any failure, including one that left
        its outcome unknown (connection lost after the COMMIT was sent).
        """
        value, node = self._on_primary(
            work, self.view(), transaction=True, idempotent=idempotent
        )
        self.events.query(PRIMARY, "write")
        try:
            # Same connection, right after COMMIT: the GTID of exactly this transaction.
            position = node.run(gtid.last_gtid)
        except NodeUnavailable:
            position = None  # committed anyway; the client just loses read-your-writes
        return Written(value, node, PRIMARY, position)

    def run_on_primary(self, work: Callable[[Any], T]) -> T:
        """Run work(cursor) once on the primary of the moment, no retries (housekeeping)."""
        view = self.view()
        if view.primary is None:
            raise NoPrimary(self._no_primary_detail(view))
        try:
            return view.primary.run(work)
        except NodeUnavailable as exc:
            self._failed(view.primary, exc)
            raise

    def _on_primary(
        self,
        work: Callable[[Any], T],
        view: RoleView,
        *,
        transaction: bool,
        idempotent: bool = False,
    ) -> tuple[T, Node]:
        """Run work on the primary of the moment, retrying what is safe to retry.

        After a failure the roles are asked again at once and the work is tried again on
        the primary they name, immediately the first time, then every BACKOFF_FIRST..
        BACKOFF_MAX seconds, for up to write_retry_seconds in all (or this request's
        shorter limit_retries). While the primary is
        gone (the last writable node does not answer) nothing waits: NoPrimary at once.
        """
        kind = "write" if transaction else "read"
        budget = self.write_retry_seconds
        limit = _retry_limit.get()
        if limit is not None:
            budget = min(budget, limit)
        deadline = self._clock() + budget
        delay = 0.0
        while True:
            node = view.primary
            if node is None:
                error: NodeUnavailable = NoPrimary(self._no_primary_detail(view))
                if view.primary_gone:
                    # A failover takes many seconds: waiting here would only hold this
                    # worker thread. The client gets a 503 with Retry-After at once.
                    raise error
                reason = "no_primary"
            else:
                try:
                    return node.run(work, transaction=transaction), node
                except NodeUnavailable as exc:
                    self._failed(node, exc)
                    # A read can always be repeated; a write if it certainly did not take
                    # effect (refused as read-only, or never sent), or if it is idempotent.
                    if transaction and not (exc.not_applied or idempotent):
                        raise
                    error = exc
                    reason = "read_only" if exc.read_only else "unavailable"
                    if exc.unreachable and self.view().primary_gone:
                        # It went silent and is marked down, and no other node is writable:
                        # gone, which fresher checks of the others would not change (they
                        # may be slow to answer while the cluster promotes one of them).
                        raise error
            seen_at = self._clock()
            remaining = deadline - seen_at
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
