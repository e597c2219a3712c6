"""Where each statement goes: writes to the primary, reads to a fresh-enough replica.

Reads prefer a healthy replica (both replication threads running, lag within bounds),
round-robin, and quietly move to the primary whenever no replica fits, a replica fails
mid-read, or the replica cannot show the client's own last write in time. A read therefore
only fails when the primary is down too.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from foobar.db import gtid
from foobar.db.health import HealthCache, check_replica
from foobar.db.nodes import PRIMARY, REPLICA, Node, NodeUnavailable

T = TypeVar("T")


class RouterEvents:
    """Hooks for metrics; the default does nothing so the library stands alone."""

    def query(self, role: str, kind: str) -> None:
        pass

    def gtid_wait(self, outcome: str) -> None:
        pass

    def fallback(self, reason: str) -> None:
        pass


@dataclass(frozen=True)
class Routed(Generic[T]):
    value: T
    node: Node

    @property
    def role(self) -> str:
        return self.node.role


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
        events: RouterEvents | None = None,
        health: HealthCache | None = None,
    ):
        self.primary = primary
        self.replicas = list(replicas)
        self.max_lag = max_lag
        self.gtid_wait_timeout = gtid_wait_timeout
        self.events = events or RouterEvents()
        self.health = health or HealthCache(
            lambda node: check_replica(node, self.max_lag), interval=check_interval
        )
        self._turn = itertools.count()

    @property
    def nodes(self) -> list[Node]:
        return [self.primary, *self.replicas]

    def healthy_replicas(self) -> list[Node]:
        return [r for r in self.replicas if self.health.get(r).healthy]

    def choose_replica(self) -> Node | None:
        """Next healthy replica in round-robin order, or None to use the primary."""
        healthy = self.healthy_replicas()
        if not healthy:
            return None
        return healthy[next(self._turn) % len(healthy)]

    def read(self, work: Callable[[Any], T], *, min_gtid: str | None = None) -> Routed[T]:
        """Run a read-only work(cursor); min_gtid is the client's last write, if any."""
        replica = self.choose_replica()
        if replica is None:
            if self.replicas:
                self.events.fallback("no_healthy_replica")
            return self._read_on_primary(work)
        try:
            if min_gtid:
                caught_up = replica.run(
                    lambda cursor: gtid.wait_for(cursor, min_gtid, self.gtid_wait_timeout)
                )
                self.events.gtid_wait("caught_up" if caught_up else "timeout")
                if not caught_up:
                    self.events.fallback("gtid_wait_timeout")
                    return self._read_on_primary(work)
            value = replica.run(work)
        except NodeUnavailable as exc:
            self.health.mark_failed(replica, f"read failed: {exc.cause}")
            self.events.fallback("replica_error")
            return self._read_on_primary(work)
        self.events.query(REPLICA, "read")
        return Routed(value, replica)

    def _read_on_primary(self, work: Callable[[Any], T]) -> Routed[T]:
        try:
            value = self.primary.run(work)
        except NodeUnavailable:
            # Reads are safe to repeat: one more go on a fresh connection.
            value = self.primary.run(work)
        self.events.query(PRIMARY, "read")
        return Routed(value, self.primary)

    def write(self, work: Callable[[Any], T]) -> Written[T]:
        """Run work(cursor) in a transaction on the primary and note the GTID it committed."""
        value = self.primary.run(work, transaction=True)
        self.events.query(PRIMARY, "write")
        try:
            # Same connection, right after COMMIT: the GTID of exactly this transaction.
            position = self.primary.run(gtid.last_gtid)
        except NodeUnavailable:
            position = None  # committed anyway; the client just loses read-your-writes
        return Written(value, self.primary, position)
