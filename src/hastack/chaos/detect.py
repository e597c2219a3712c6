"""When the stack noticed a fault (catalog's module doc says how each kind is measured).

`Watcher` polls a probe in a thread from the moment of the fault until it answers yes (or
it is stopped); `vip_moved` reads the same from the load's own samples afterwards.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

import httpx

from hastack import lb
from hastack import status as monitoring
from hastack.chaos.catalog import Fault
from hastack.chaos.health import vip_owners
from hastack.chaos.load import Tag
from hastack.errors import HastackError
from hastack.fleet import Fleet
from hastack.loadgen import Sample
from hastack.topology import Topology


class Watcher:
    """Poll `probe` every `interval` s in a thread; `seen` is the first monotonic time it
    returned True (None if it never did before stop())."""

    def __init__(self, probe: Callable[[], bool], interval: float):
        self.seen: float | None = None
        self._probe, self._interval = probe, interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._probe():
                    self.seen = time.monotonic()
                    return
            except (HastackError, httpx.HTTPError, OSError):
                pass  # a probe that cannot answer now has not seen it yet
            self._stop.wait(self._interval)

    def start(self) -> Watcher:
        self._thread.start()
        return self

    def stop(self) -> float | None:
        self._stop.set()
        self._thread.join()
        return self.seen


def backend_down(fleet: Fleet, topo: Topology, server: str) -> Callable[[], bool]:
    """Every LB (but the faulted machine itself) marks `server` DOWN."""
    lbs = [m.name for m in topo.with_role("loadbalancer") if m.name != server]

    def probe() -> bool:
        return all(lb.server_stats(fleet, name)[server]["status"].startswith("DOWN")
                   for name in lbs)
    return probe


def prometheus_sees(topo: Topology, query: str) -> Callable[[], bool]:
    """The first monitoring machine that answers has a result for `query`."""
    def probe() -> bool:
        for prometheus, _ in monitoring.endpoints(topo):
            try:
                r = httpx.get(f"{prometheus}/api/v1/query", params={"query": query},
                              timeout=0.5)
                r.raise_for_status()
            except httpx.HTTPError:
                continue
            return bool(monitoring.samples(r.json()))
        return False
    return probe


def watcher_for(fault: Fault, fleet: Fleet, topo: Topology) -> Watcher | None:
    if fault.kind.detect == "backend":
        return Watcher(backend_down(fleet, topo, fault.machine), 0.1)
    if fault.kind.detect == "monitor":
        return Watcher(prometheus_sees(topo, fault.monitor_query), 0.5)
    return None  # vip: from the samples; none: nothing to detect


def vip_moved(samples: Iterable[Sample], topo: Topology, lb_name: str, t_fault: float
              ) -> float | None:
    """End of the first success through a VIP `lb_name` is master of that another LB
    answered, after the fault (the VIP moved, as clients see it)."""
    mine = {vip for vip, owner in vip_owners(topo).items() if owner == lb_name}
    return min((s.end for s in samples
                if s.ok and s.start >= t_fault and isinstance(s.tag, Tag) and s.tag.vip in mine
                and isinstance(s.note, dict) and s.note.get("lb") not in (None, lb_name)),
               default=None)


HOW = {
    "vip": "first success through the LB's VIP answered by the other LB (X-LB)",
    "backend": "the server marked DOWN on every other LB (HAProxy stats, polled every 0.1 s)",
    "monitor": "Prometheus sees it down (polled every 0.5 s; 5 s scrape interval)",
    "none": "not measured (a deploy is not a failure to detect)",
}
