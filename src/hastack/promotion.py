"""Automatic promotion on or off, and the operator's failover while it is off.

On (the default), Pacemaker promotes a replica by itself once the primary is lost. An operator
who wants a person to decide turns it off: one location constraint (the pin) then forbids the
promoted role on every node but today's primary, so a lost primary stays lost (fenced as
usual) and writes wait. `hastack db failover` moves the pin to the replica holding the last
acknowledged write, and Pacemaker promotes it; a switchover moves the pin with the primary.
This is not a second failover path: the cluster still demotes, fences and promotes, keeping
one primary at most; hastack only says where it may.
"""

from __future__ import annotations

import time

from rich.console import Console

from hastack import cluster, db
from hastack.errors import HastackError
from hastack.fleet import Fleet


def _on_any_node(fleet: Fleet, command: list[str], what: str) -> str:
    """Run a cluster command on the first DB node that can (any member reaches the CIB)."""
    errors = []
    for name in db.db_nodes(fleet.require_topology()):
        try:
            out = fleet.run_on(name, command, timeout=15)
        except Exception as exc:  # noqa: BLE001 - the next node may answer
            errors.append(f"{name}: {exc}")
            continue
        if out.returncode == 0:
            return out.stdout
        errors.append(f"{name}: {(out.stderr.strip() or 'no answer').splitlines()[-1]}")
    raise HastackError(f"{what}: no DB node could do it ({'; '.join(errors)})")


def pinned_node(fleet: Fleet) -> str | None:
    """Where the pin allows the primary (None: automatic promotion is on)."""
    answer = _on_any_node(fleet, cluster.ASK_CONSTRAINTS.split(),
                          "reading the cluster's constraints")
    return cluster.parse_constraints(answer)["promotion_pin"]


def set_automatic(fleet: Fleet, on: bool, console: Console) -> None:
    """Automatic promotion on (the pin removed) or off (the pin on today's primary)."""
    nodes = db.status(fleet)
    if len(nodes) < 2:
        raise HastackError("one DB node: there is no cluster to promote a replica in")
    if on:
        pin = pinned_node(fleet)
        if pin is None:
            console.print("automatic failover is already on")
            return
        unpin = ["cibadmin", "--delete", "--xml-text",
                 f'<rsc_location id="{db.PROMOTION_PIN_ID}"/>']
        _on_any_node(fleet, unpin, "removing the promotion pin")
        console.print("automatic failover on: the cluster promotes a replica by itself "
                      "when the primary is lost")
        return
    primaries = [n.name for n in nodes if n.role == "primary"]
    if len(primaries) != 1:
        raise HastackError(f"expected exactly one writable primary to pin, found "
                           f"{', '.join(primaries) or 'none'}; fix that first")
    fleet.run_checked(primaries[0], db.pin_command(primaries[0]), "pinning the primary")
    console.print(f"automatic failover off: only {primaries[0]} may be the primary; if it is "
                  "lost, writes wait for `hastack db failover`")


def _gtid_seq(*positions: str) -> int:
    """The highest sequence number in these GTID positions (one replication domain)."""
    seqs = [int(part.rsplit("-", 1)[1]) for pos in positions for part in pos.split(",")
            if part.count("-") == 2 and part.rsplit("-", 1)[1].isdigit()]
    return max(seqs, default=0)


def held(node: db.NodeStatus) -> int:
    """How far a node's data goes: what it applied or (a replica) received."""
    return _gtid_seq(node.gtid_binlog_pos, node.gtid_slave_pos, node.gtid_io_pos)


def choose_target(nodes: list[db.NodeStatus], requested: str | None = None,
                  force: bool = False) -> str:
    """The replica to promote: the one holding the last acknowledged write. Refuses while a
    primary is writable, or while a replica that may hold later writes does not answer."""
    names = [n.name for n in nodes]
    if requested is not None and requested not in names:
        raise HastackError(f"'{requested}' is not a database node; nodes: {', '.join(names)}")
    primaries = [n.name for n in nodes if n.role == "primary"]
    if primaries:
        raise HastackError(f"{primaries[0]} is a writable primary: nothing to fail over; a "
                           "planned move is `hastack db switchover NODE`")
    replicas = [n for n in nodes if n.role in ("replica", "unconfigured")]
    if not replicas:
        raise HastackError("no DB node answers as a replica: nothing to promote "
                           "(`hastack db status`)")
    silent = [n.name for n in nodes if n.role == "down"]
    # A write is acknowledged once one replica has it: all but one node (the lost primary)
    # must answer to know where the last one is.
    if len(replicas) < len(nodes) - 1 and not force:
        raise HastackError(f"{', '.join(silent)} do(es) not answer and may hold the last "
                           "acknowledged writes; bring it back, or pass --force to promote "
                           "among the nodes that answer")
    best = max(replicas, key=held)
    if requested is None:
        return best.name
    chosen = next((n for n in replicas if n.name == requested), None)
    if chosen is None:
        state = next(n for n in nodes if n.name == requested)
        raise HastackError(f"{requested} is {state.role}, not a replica that answers; "
                           f"promote {best.name}")
    if held(chosen) < held(best) and not force:
        raise HastackError(f"{requested} holds less than {best.name} (GTID sequence "
                           f"{held(chosen)} < {held(best)}): promoting it would lose "
                           f"acknowledged writes; promote {best.name}, or pass --force")
    return requested


def failover(fleet: Fleet, console: Console, target: str | None = None, force: bool = False,
             timeout: float = 120.0) -> dict[str, float | str]:
    """The operator's failover while automatic promotion is off: the pin moves to the
    replica holding the last acknowledged write, which the cluster promotes."""
    pin = pinned_node(fleet)
    if pin is None:
        raise HastackError("automatic failover is on: the cluster promotes a replica by "
                           "itself; `hastack db failover` is for when it is off "
                           "(`hastack db auto-failover off`)")
    nodes = db.status(fleet)
    chosen = choose_target(nodes, target, force)
    started = time.monotonic()
    others = " ".join(n.name for n in nodes if n.name != chosen)
    console.print(f"failover: promoting {chosen} (the primary was pinned to {pin})")
    fleet.run_checked(chosen, "sh -s", f"moving the promotion to {chosen}",
                      stdin=db.PROMOTION_SCORE_SCRIPT.format(
                          resource=db.CLUSTER_RESOURCE, target=chosen, others=others,
                          pin_step=db.pin_command(chosen) + "\n"))
    topo = fleet.require_topology()
    deadline = started + timeout
    while db.node_status(fleet, topo, chosen).role != "primary":
        if time.monotonic() > deadline:
            raise HastackError(f"{chosen} was not promoted within {timeout:.0f} s; see "
                               "`hastack db status` (the cluster's view)")
        time.sleep(0.2)
    took = time.monotonic() - started
    console.print(f"{chosen} is the primary (writable {took:.2f} s after the request); "
                  "automatic failover stays off")
    return {"target": chosen, "promoted_s": round(took, 2)}
