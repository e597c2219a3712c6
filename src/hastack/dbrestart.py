"""Rolling restart of the database tier through the cluster engine.

Under Pacemaker a changed MariaDB configuration applies at a node's next start, and the deploy
restarts nothing (a restart outside the engine is a failure to it). Here each node's instance
is stopped and started by the engine itself, one node at a time: the replicas first, then a
switchover to a restarted replica, then the old primary, which comes back as a replica. A
node is stopped by a ban of the clone from it and started again by clearing the ban; the ban
carries a lifetime, so a restart that dies half-way does not keep a node out for good.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from rich.console import Console

from hastack import db
from hastack.errors import HastackError
from hastack.fleet import Fleet

CLONE = f"{db.CLUSTER_RESOURCE}-clone"
BAN_LIFETIME = "PT10M"  # the safety net: a ban hastack could not clear expires by itself


def order(nodes: list[db.NodeStatus], only: list[str] | None = None) -> tuple[list[str], str]:
    """The replicas to restart (in node order) and the primary; refuses what cannot roll."""
    names = [n.name for n in nodes]
    unknown = [n for n in only or [] if n not in names]
    if unknown:
        raise HastackError(f"'{unknown[0]}' is not a database node; nodes: {', '.join(names)}")
    primaries = [n.name for n in nodes if n.role == "primary"]
    if len(primaries) != 1:
        raise HastackError(f"expected exactly one writable primary, found "
                           f"{', '.join(primaries) or 'none'}; fix that first")
    primary = primaries[0]
    unfit = [f"{n.name} ({n.role}, IO {n.io_running or '-'}, SQL {n.sql_running or '-'})"
             for n in nodes if n.name != primary
             and (n.role != "replica" or (n.io_running, n.sql_running) != ("Yes", "Yes"))]
    if unfit:
        raise HastackError(f"not every replica is replicating: {', '.join(unfit)}; a rolling "
                           "restart needs them all healthy first (`hastack db status`)")
    if len(nodes) < 2:
        raise HastackError("a rolling restart needs a replica to move the primary to")
    wanted = set(only or names)
    return [n for n in names if n != primary and n in wanted], (
        primary if primary in wanted else "")


def wait_for(what: str, check: Callable[[], bool], timeout: float, interval: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise HastackError(f"{what} did not happen within {timeout:.0f} s; see "
                               "`hastack db status` (the cluster's view)")
        time.sleep(interval)


def caught_up(fleet: Fleet, topo: Any, node: str) -> bool:
    """The node replicates, both threads running, with no lag."""
    st = db.node_status(fleet, topo, node)
    return (st.role == "replica" and (st.io_running, st.sql_running) == ("Yes", "Yes")
            and st.lag_seconds == 0)


def restart_replica(fleet: Fleet, node: str, timeout: float = 180.0) -> dict[str, float]:
    """Stop and start one replica's instance through the engine; back once it replicates
    again with no lag."""
    topo = fleet.require_topology()
    started = time.monotonic()
    fleet.run_checked(node, ["crm_resource", "--resource", CLONE, "--ban", "--node", node,
                             "--lifetime", BAN_LIFETIME, "--quiet"],
                      f"banning the database instance from {node} (to stop it)")
    try:
        wait_for(f"the cluster stopping {node}'s MariaDB",
                 lambda: db.node_status(fleet, topo, node).role == "down", timeout)
        stopped = time.monotonic() - started
    finally:
        fleet.run_checked(node, ["crm_resource", "--resource", CLONE, "--clear", "--node", node,
                                 "--quiet"], f"clearing the ban of {node}")

    wait_for(f"{node} replicating again after its restart",
             lambda: caught_up(fleet, topo, node), timeout)
    return {"stopped_s": round(stopped, 2), "back_s": round(time.monotonic() - started, 2)}


def rolling_restart(fleet: Fleet, console: Console, only: list[str] | None = None
                    ) -> dict[str, dict[str, float]]:
    """Restart every database node (or `only` those) one at a time through the cluster;
    per node, its timings."""
    replicas, primary = order(db.status(fleet), only)
    done: dict[str, dict[str, float]] = {}
    for node in replicas:
        console.print(f"{node}: restarting (replica) through the cluster")
        done[node] = restart_replica(fleet, node)
        console.print(f"{node}: stopped after {done[node]['stopped_s']:.1f} s, replicating "
                      f"again after {done[node]['back_s']:.1f} s")
    if primary:
        target = replicas[0] if replicas else next(
            n.name for n in db.status(fleet) if n.name != primary)
        console.print(f"{primary} is the primary: switchover to {target} first")
        timings = db.switchover(fleet, target, console)
        console.print(f"{primary}: restarting (now a replica) through the cluster")
        done[primary] = {**restart_replica(fleet, primary),
                         "switchover_s": round(timings["promoted_s"], 2)}
        console.print(f"{primary}: stopped after {done[primary]['stopped_s']:.1f} s, "
                      f"replicating again after {done[primary]['back_s']:.1f} s; "
                      f"{target} is the primary now")
    return done


def restart_pending(fleet: Fleet, console: Console) -> dict[str, dict[str, float]]:
    """After a deploy: restart, through the cluster, the DB nodes whose configuration changed
    since their server started (without a cluster the deploy restarted them itself). What
    cannot roll now is said, not failed: the nodes stay pending (`hastack db status`) and the
    next deploy or `hastack db restart` does it."""
    nodes = db.status(fleet)
    pending = [n.name for n in nodes if n.restart_pending]
    if len(nodes) < 2 or not pending:
        return {}
    console.print(f"MariaDB's configuration changed on {', '.join(pending)}: rolling restart "
                  "through the cluster")
    try:
        return rolling_restart(fleet, console, pending)
    except HastackError as exc:
        console.print(f"[yellow]not restarted[/yellow]: {exc}; the change applies at each "
                      "node's next start (`hastack db restart`)")
        return {}
