"""Is the whole stack healthy? The wait between two faults, and the measure of recovery.

Healthy means, all at once:
- every machine running (the lab's state) and `ok` in `hastack status` (monitoring sees
  every daemon active and every scrape up);
- every web server UP on every LB (HAProxy's own stats, not monitoring's older copy);
- exactly one writable primary, every replica's IO and SQL threads running;
- every VIP answered by its master LB (X-LB of /healthz through it; VIP i's master is
  LB i, as keepalived's priorities are rendered).
`problems()` lists what is not; `wait_healthy()` polls it.
"""

from __future__ import annotations

import time

import httpx

from hastack import db, lb, siteclient
from hastack import status as monitoring
from hastack.errors import HastackError
from hastack.fleet import Fleet
from hastack.topology import Topology


def vip_owners(topo: Topology) -> dict[str, str]:
    """Each VIP's master LB."""
    lbs = [m.name for m in topo.with_role("loadbalancer")]
    return {str(v.address): lbs[i % len(lbs)] for i, v in enumerate(topo.vips)} if lbs else {}


def lb_of(vip: str, domain: str, ca: str, timeout: float = 1.0) -> str:
    """The LB answering a VIP now ('' if none answers)."""
    try:
        return siteclient.get(vip, domain, "/healthz", ca, timeout=timeout).headers.get(
            "x-lb", "")
    except httpx.HTTPError:
        return ""


def vip_problems(fleet: Fleet, topo: Topology) -> list[str]:
    ca = str(fleet.ca_cert())
    return [f"VIP {vip} answered by {got or 'nobody'}, not {owner}"
            for vip, owner in vip_owners(topo).items()
            if (got := lb_of(vip, topo.domain, ca)) != owner]


def backend_problems(fleet: Fleet, topo: Topology) -> list[str]:
    out = []
    for name in [m.name for m in topo.with_role("loadbalancer")]:
        try:
            stats = lb.server_stats(fleet, name)
        except HastackError as exc:
            out.append(str(exc))
            continue
        out += [f"{name}: {server} {row['status']}" for server, row in stats.items()
                if row["status"] != "UP"]
    return out


def replication_problems(fleet: Fleet) -> list[str]:
    nodes = db.status(fleet)
    out = [f"{n.name}: {n.role}" + (f" ({n.error})" if n.error else "")
           for n in nodes if n.role not in ("primary", "replica")]
    primaries = [n.name for n in nodes if n.role == "primary"]
    if len(primaries) != 1:
        out.append(f"writable primaries: {', '.join(primaries) or 'none'}")
    out += [f"{n.name}: replication IO {n.io_running or '?'}, SQL {n.sql_running or '?'}"
            for n in nodes if n.role == "replica"
            and (n.io_running, n.sql_running) != ("Yes", "Yes")]
    return out


def machine_problems(fleet: Fleet, topo: Topology) -> list[str]:
    seen = monitoring.collect(topo, timeout=1.0)
    if seen.get("error"):
        return [f"monitoring: {seen['error']}"]
    merged = monitoring.merge(fleet.status(seen), seen)
    return [f"{m['name']}: {m['state']}, {m['health']}" for m in merged["machines"]
            if m["state"] not in ("running", "up") or m["health"] != "ok"]


def problems(fleet: Fleet) -> list[str]:
    topo = fleet.require_topology()
    return (vip_problems(fleet, topo) + backend_problems(fleet, topo)
            + replication_problems(fleet) + machine_problems(fleet, topo))


def wait_healthy(fleet: Fleet, timeout: float, interval: float = 0.5) -> float:
    """Poll until problems() is empty; return that moment (monotonic), or raise with what
    was still wrong after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = problems(fleet)
        if not found:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise HastackError(f"the stack is not healthy after {timeout:.0f} s: "
                               + "; ".join(found[:6]))
        time.sleep(interval)
