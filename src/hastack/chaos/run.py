"""The chaos experiment: one fault at a time under a steady load, healed, then the audit.

For each fault: wait until the whole stack is healthy (chaos.health); give a DB fault's
machine the role its name says (a switchover, if an earlier failover swapped them); start
the load; after
LEAD_S of normal traffic inject the fault; hold it `fault_seconds`; heal it; wait for full
health again (that wait is the recovery time); TAIL_S more of load; stop the load. The load
runs over the whole cycle, so failures while a machine boots back count too. A fault is
always healed, whatever goes wrong meanwhile. At the end every write of the run is looked
up on every DB node (chaos.ledger).

`prepare` checks everything (lab up, root, fault names, the bounds) before anything starts;
`execute` does the work and returns the report's data; `verdict` says what failed.
"""

from __future__ import annotations

import io
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from rich.console import Console

from hastack import db
from hastack.chaos import catalog, detect, figures, goals, health, ledger
from hastack.chaos.catalog import Fault
from hastack.chaos.load import TIMEOUT, MixedLoad, inspect, resolve
from hastack.errors import HastackError
from hastack.fleet import Fleet
from hastack.lab.lab import require_root
from hastack.loadgen import BackgroundLoad, Sample
from hastack.topology import Topology

LEAD_S = 3.0           # normal traffic before the fault
TAIL_S = 2.0           # after full health is back
SETTLE_TIMEOUT = 240.0  # longest wait for full health (a machine booting back, rise 2)

Progress = Callable[[str], None]


@dataclass
class Plan:
    fleet: Fleet
    topo: Topology
    faults: list[Fault]
    rate: float
    fault_seconds: float


def prepare(fleet: Fleet, names: list[str] | None, rate: float, fault_seconds: float) -> Plan:
    """Everything checked before anything starts; one clear error otherwise."""
    catalog.check_load(rate, fault_seconds)
    topo = fleet.require_topology()  # the lab down: "no lab is up; run 'hastack up' first"
    faults = catalog.select(topo, names, fleet.physical_faults)
    if fleet.physical_faults:
        require_root("chaos")
    if not faults:
        raise HastackError("no fault to inject in this topology")
    return Plan(fleet, topo, faults, rate, fault_seconds)


def addresses(plan: Plan) -> tuple[list[str], str]:
    """Where the load goes: the A records of the domain at the site's DNS server (the VIPs
    themselves if the topology has no DNS machine), and how they were found."""
    dns = plan.topo.with_role("dns")
    if not dns:
        return [str(v.address) for v in plan.topo.vips], "the topology's VIPs (no DNS machine)"
    server = str(dns[0].public_address)
    return resolve(plan.topo.domain, server), f"A records of {plan.topo.domain} at {server}"


DB_ROLES = {"db-primary": "primary", "db-replica": "replica"}


def recast(fault: Fault, roles: dict[str, str]) -> str | None:
    """The DB node to promote so that the fault's machine has the role its name promises
    (None: it has). A failover in an earlier fault may have swapped them: `db1-power-off`
    must power off the primary of the moment, not the replica db1 became."""
    want = DB_ROLES.get(fault.kind.role)
    if want is None or roles.get(fault.machine) == want:
        return None
    if want == "primary":
        return fault.machine
    return next((name for name, role in roles.items()
                 if role == "replica" and name != fault.machine), None)


def cast(plan: Plan, fault: Fault, progress: Progress) -> str | None:
    """Give a DB fault's machine its role (a switchover, then full health again); the role
    it has when the fault strikes."""
    if fault.kind.role not in DB_ROLES:
        return None
    roles = {n.name: n.role for n in db.status(plan.fleet)}
    target = recast(fault, roles)
    if target is not None:
        progress(f"{fault.name}: {fault.machine} is the {roles.get(fault.machine)}; "
                 f"switchover to {target} first")
        db.switchover(plan.fleet, target, Console(file=io.StringIO(), width=120))
        health.wait_healthy(plan.fleet, SETTLE_TIMEOUT)
        roles = {n.name: n.role for n in db.status(plan.fleet)}
    return roles.get(fault.machine)


def in_flight(samples: list[Sample], topo: Topology, lb_name: str, t: float) -> int:
    """Requests through the VIPs `lb_name` held that had started and not ended at `t`:
    what a dying LB may take with it."""
    vips = {vip for vip, owner in health.vip_owners(topo).items() if owner == lb_name}
    return sum(1 for s in samples
               if getattr(s.tag, "vip", None) in vips and s.start <= t < s.end)


def one_fault(plan: Plan, load: MixedLoad, index: int, fault: Fault, progress: Progress
              ) -> tuple[dict[str, Any], list[Sample]]:
    fleet, topo = plan.fleet, plan.topo
    health.wait_healthy(fleet, SETTLE_TIMEOUT)
    role = cast(plan, fault, progress)
    bound = LEAD_S + plan.fault_seconds + SETTLE_TIMEOUT + TAIL_S + 30
    t_heal: float | None = None
    t_healthy: float | None = None
    error: str | None = None
    watcher = detect.watcher_for(fault, fleet, topo)
    with BackgroundLoad(f"https://{load.addresses[0]}/", host_header=topo.domain,
                        rate=plan.rate, timeout=TIMEOUT, duration=bound, record_header="x-lb",
                        ca_file=str(fleet.ca_cert()), plan=load.plan(index),
                        inspect=inspect) as bg:
        if not bg.wait_for(int(plan.rate * LEAD_S), LEAD_S + 10):
            raise HastackError("the load did not start (is the site answering?)")
        progress(f"{fault.name}: injecting ({fault.describe()})")
        t_inject = time.monotonic()
        try:
            if watcher:
                watcher.start()
            t_inject = fault.inject(fleet)
            time.sleep(max(0.0, t_inject + plan.fault_seconds - time.monotonic()))  # the hold
        finally:
            t_heal = fault.heal(fleet)
            progress(f"{fault.name}: healed, waiting for full health")
        try:
            t_healthy = health.wait_healthy(fleet, SETTLE_TIMEOUT)
        except HastackError as exc:
            error = str(exc)
        bg.wait_for(len(bg.live) + int(plan.rate * TAIL_S), TAIL_S + 10)
    detected = watcher.stop() if watcher else None
    assert bg.result is not None
    samples = bg.result.samples
    if fault.kind.detect == "vip":
        detected = detect.vip_moved(samples, topo, fault.machine, t_inject)
    result = {
        "fault": fault.name,
        "what": fault.describe() + (f" (the {role})" if role else ""),
        "db_role": role,
        "expect": fault.expect,
        "detection_s": None if detected is None else round(detected - t_inject, 3),
        "detection_measured_by": detect.HOW[fault.kind.detect],
        **figures.fault_figures(samples, t_inject, t_heal, t_healthy),
    }
    if fault.kind.detect == "vip":
        result["in_flight_at_fault"] = in_flight(samples, topo, fault.machine, t_inject)
    result["promise_broken"] = figures.promise_broken(fault.expect, result["requests"])
    if error:
        result["error"] = error
    return result, samples


def execute(plan: Plan, progress: Progress, command: str = "hastack chaos") -> dict[str, Any]:
    started = datetime.now(UTC)
    addrs, how = addresses(plan)
    load = MixedLoad(addrs)
    progress(f"load: {plan.rate:g} req/s over {', '.join(addrs)} ({how}); run {load.run_id}")
    results, writes = [], []
    for index, fault in enumerate(plan.faults):
        result, samples = one_fault(plan, load, index, fault, progress)
        results.append(result)
        writes += ledger.writes_from(samples, fault.name)
        progress(f"{fault.name}: {result['failed']} failed, detected "
                 f"{result['detection_s']} s, healthy {result['healthy_after_heal_s']} s "
                 "after heal")
        if result.get("error"):
            break  # the stack did not come back: no further fault on a broken stack
    progress("auditing every write on every DB node")
    nodes = db.status(plan.fleet)
    primary = next((n.name for n in nodes if n.role == "primary"), None)
    if primary is None:
        raise HastackError("no primary after the run; the audit needs one")
    replicas = [n.name for n in nodes if n.name != primary]
    ledger.sync_replicas(plan.fleet, primary, replicas)
    rows = {n.name: ledger.read_node(plan.fleet, n.name, load.run_id) for n in nodes}
    audit = ledger.audit(writes, rows)
    for r in results:
        phase = audit["by_phase"].get(r["fault"], {})
        r["writes_lost"] = phase.get("lost", 0)
        r["writes_applied_twice"] = phase.get("duplicated", 0)
    data = {
        "command": command,
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": {"cores": os.cpu_count(), "machine": platform.machine(),
                 "python": platform.python_version()},
        "load": {"generator": "hastack.loadgen (Python, httpx, asyncio; open loop, a new "
                              "TLS connection per request)",
                 "rate_per_s": plan.rate, "write_share": f"1 in {catalog.WRITE_EVERY}",
                 "timeout_s": TIMEOUT, "addresses": addrs, "resolved_by": how,
                 "run_id": load.run_id},
        "fault_seconds": plan.fault_seconds,
        "faults": results,
        "audit": audit,
        "verdict": verdict(results, audit),
    }
    data["goals"] = goals.judge(data)
    return data


def verdict(results: list[dict[str, Any]], audit: dict[str, Any]) -> list[str]:
    """What failed, one line each; empty when every promise was kept."""
    out = []
    if audit["lost"]:
        out.append(f"{audit['lost']} acknowledged writes lost")
    if audit["duplicated"]:
        out.append(f"{audit['duplicated']} writes applied twice")
    out += [f"{r['fault']}: {r['promise_broken']}" for r in results if r.get("promise_broken")]
    out += [f"{r['fault']}: {r['error']}" for r in results if r.get("error")]
    return out
