"""The database tier seen from the admin bastion: status of each node, planned switchover.

Everything goes through SSH to the nodes and the `mariadb` client there (root over the local
socket), so no database port is opened to the host.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console

from hastack.errors import HastackError
from hastack.fleet import Fleet
from hastack.topology import Topology


def _global_status(name: str) -> str:
    return (f"(SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
            f"WHERE VARIABLE_NAME='{name}')")


STATUS_SQL = (
    "SELECT @@read_only, @@gtid_binlog_pos, @@gtid_slave_pos, "
    f"{_global_status('THREADS_RUNNING')}, @@rpl_semi_sync_master_enabled, "
    f"{_global_status('RPL_SEMI_SYNC_MASTER_STATUS')}, "
    f"{_global_status('RPL_SEMI_SYNC_MASTER_CLIENTS')}, "
    f"{_global_status('RPL_SEMI_SYNC_SLAVE_STATUS')}, "
    f"UNIX_TIMESTAMP() - {_global_status('UPTIME')}; SHOW SLAVE STATUS\\G"
)
# MariaDB's own configuration (the role file aside, which changes live): newer than the
# server's start means a change waiting for the node's next start (dbrestart).
CONFIG_FILE = "/etc/mysql/mariadb.conf.d/60-hastack.cnf"
STATUS_COMMAND = f"stat -c %Y {CONFIG_FILE} 2>/dev/null || echo 0; mariadb -B"


# Replication errors that mean a replica holds a GTID its primary never had: 1950, its SQL
# thread met an out-of-order GTID (strict mode); 1236, the primary's binlog lacks the position
# the replica asks for.
DIVERGED_ERRNOS = {"1950", "1236"}


@dataclass
class NodeStatus:
    name: str
    address: str
    role: str  # primary | replica | down | unconfigured
    read_only: bool | None = None
    gtid_binlog_pos: str = ""
    gtid_slave_pos: str = ""
    gtid_io_pos: str = ""  # a replica: what it received (applied or not)
    replicating_from: str = ""
    io_running: str = ""
    sql_running: str = ""
    lag_seconds: int | None = None
    threads_running: int | None = None
    # Semi-synchronous replication. A primary: "on" (a commit is answered once a replica
    # has it), "off" (it goes on without: no replica acknowledged in time, or none is
    # connected, where it does not wait at all: rpl_semi_sync_master_wait_no_slave=OFF under
    # the cluster, and the server still says ON) or "disabled" (not configured: no
    # replicas); semi_sync_replicas acknowledging it. A replica: "on"
    # when its IO thread acknowledges what it receives.
    semi_sync: str = ""
    semi_sync_replicas: int | None = None
    # its configuration changed after the server started: applies at its next start
    restart_pending: bool = False
    # a replica's last replication error ("errno: text"), and whether it says the node's data
    # diverged from its primary's (a GTID the primary never had: `hastack db reseed`)
    replication_error: str = ""
    diverged: bool = False
    error: str = ""


def db_nodes(topo: Topology) -> list[str]:
    return [m.name for m in topo.machines if {"db-primary", "db-replica"} & set(m.roles)]


def node_status(fleet: Fleet, topo: Topology, node: str) -> NodeStatus:
    m = topo.machine(node)
    st = NodeStatus(node, str(m.private_address), "down")
    try:
        out = fleet.run_on(node, STATUS_COMMAND, timeout=10, stdin=STATUS_SQL)
    except Exception as exc:  # noqa: BLE001 - a node that cannot be asked is reported, not fatal
        st.error = str(exc)
        return st
    if out.returncode != 0:
        st.error = (out.stderr.strip() or "unreachable").splitlines()[-1]
        return st
    config_time, *lines = out.stdout.splitlines()
    values = lines[1].split("\t")
    st.restart_pending = int(config_time) > int(float(values[8]))
    st.read_only = values[0] == "1"
    st.gtid_binlog_pos, st.gtid_slave_pos = values[1], values[2]
    st.threads_running = int(values[3])
    enabled, master_on, clients, slave_on = values[4:8]
    if st.read_only:
        st.semi_sync = "on" if slave_on == "ON" else "off"
    else:
        st.semi_sync_replicas = int(clients)
        waits = master_on == "ON" and st.semi_sync_replicas > 0
        st.semi_sync = "disabled" if enabled != "1" else ("on" if waits else "off")
    slave = {}
    for line in lines[2:]:
        if ":" in line and not line.startswith("*"):
            key, _, value = line.partition(":")
            slave[key.strip()] = value.strip()
    if slave.get("Master_Host"):
        st.replicating_from = slave["Master_Host"]
        st.io_running, st.sql_running = slave["Slave_IO_Running"], slave["Slave_SQL_Running"]
        st.gtid_io_pos = slave.get("Gtid_IO_Pos", "")
        errors = [(slave.get(f"Last_{t}_Errno", "0"), slave.get(f"Last_{t}_Error", ""))
                  for t in ("SQL", "IO")]
        st.replication_error = next((f"{n}: {text}" for n, text in errors if n != "0"), "")
        st.diverged = any(n in DIVERGED_ERRNOS for n, _ in errors)
        lag = slave.get("Seconds_Behind_Master", "NULL")
        st.lag_seconds = None if lag == "NULL" else int(lag)
    if not st.read_only:
        st.role = "primary"
    elif st.replicating_from:
        st.role = "replica"
    else:
        st.role = "unconfigured"
    return st


def status(fleet: Fleet) -> list[NodeStatus]:
    topo = fleet.require_topology()
    return fleet.on_each(db_nodes(topo), lambda n: node_status(fleet, topo, n))


def status_dicts(fleet: Fleet) -> list[dict[str, Any]]:
    return [asdict(s) for s in status(fleet)]


def sole_primary(nodes: dict[str, NodeStatus], node: str) -> NodeStatus:
    """The one writable node, after checking `node` is a DB node: what an operation that
    names a node and needs the primary refuses first."""
    if node not in nodes:
        raise HastackError(f"'{node}' is not a database node; nodes: {', '.join(nodes)}")
    primaries = [s for s in nodes.values() if s.role == "primary"]
    if len(primaries) != 1:
        raise HastackError(f"expected exactly one writable primary, found "
                           f"{', '.join(p.name for p in primaries) or 'none'}; fix that first")
    return primaries[0]


def switchover(fleet: Fleet, target: str, console: Console, timeout: float = 60.0
               ) -> dict[str, float]:
    """Planned promotion of a replica, through the cluster engine, losing no acknowledged write.

    The target gets the highest promotion score; Pacemaker then
    demotes the primary (the agent makes it read-only and ends its sessions), every replica
    (the target first of all) applies all it has before it stops replicating from it (the
    agent's client, ansible/roles/cluster), the target is promoted and the others follow it.
    The target keeps its score, so the cluster does not elect another node afterwards (the
    agent's own "move" would: notes on ocf:heartbeat:mariadb). Nothing is recorded: the
    inventory's db_primary names only the first primary.
    """
    nodes = {s.name: s for s in status(fleet)}
    old = sole_primary(nodes, target)
    new = nodes[target]
    if new.name == old.name:
        raise HastackError(f"{target} is already the primary")
    if new.role != "replica" or new.replicating_from != old.address:
        raise HastackError(f"{target} does not replicate from {old.name}; cannot promote it")
    if new.io_running != "Yes" or new.sql_running != "Yes":
        raise HastackError(f"{target}'s replication is not running (IO {new.io_running}, "
                           f"SQL {new.sql_running}); fix it before a switchover")
    timings: dict[str, float] = {}
    topo = fleet.require_topology()
    started = time.monotonic()
    console.print(f"switchover {old.name} -> {target}: through the cluster (promotion score)")
    others = " ".join(n for n in nodes if n != target)
    fleet.run_checked(target, "sh -s", f"setting {target}'s promotion score",
                      stdin=PROMOTION_SCORE_SCRIPT.format(resource=CLUSTER_RESOURCE,
                                                          target=target, others=others,
                                                          pin_step=move_pin_if_any(target)))
    deadline = started + timeout
    while True:
        st = node_status(fleet, topo, target)
        if st.role == "primary":
            break
        if time.monotonic() > deadline:
            raise HastackError(f"{target} was not promoted within {timeout:.0f} s; see "
                               "`hastack db status` (the cluster's view) and the node's "
                               "pacemaker log")
        time.sleep(0.1)
    timings["promoted_s"] = time.monotonic() - started
    while True:
        st = node_status(fleet, topo, old.name)
        if st.replicating_from == new.address and st.io_running == "Yes":
            break
        if time.monotonic() > deadline:
            raise HastackError(f"{target} is the primary, but {old.name} does not replicate "
                               f"from it after {timeout:.0f} s; see `hastack db status`")
        time.sleep(0.2)
    timings["old_primary_follows_s"] = time.monotonic() - started
    console.print(f"{target} is the primary (writable {timings['promoted_s']:.2f} s after the "
                  f"request); {old.name} replicates from it "
                  f"({timings['old_primary_follows_s']:.2f} s)")
    return timings


CLUSTER_RESOURCE = "db"  # the cluster role's cluster_db_resource

# On any node (one SSH round trip): the target's promotion score one above the highest any
# node has (the agent's election gives 100; an earlier switchover's target may hold more), in
# one change of the CIB: Pacemaker moves the promoted role there in one transition (a second
# change, e.g. removing the others' scores, aborted it and cost 3 s) and keeps it there; the
# demoted node's score goes with its demotion (the agent removes it).
PROMOTION_SCORE_SCRIPT = """set -e
top=100
for node in {others}; do
  score=$(crm_attribute --promotion={resource} --node "$node" --lifetime reboot --query \
          --quiet 2>/dev/null || true)
  case "$score" in ''|*[!0-9]*) ;; *) [ "$score" -le "$top" ] || top=$score ;; esac
done
crm_attribute --promotion={resource} --node {target} --lifetime reboot --update $((top + 1))
{pin_step}"""

# With automatic promotion off (hastack.promotion), one location constraint keeps the promoted
# role on one node; a planned or an operator's move takes it along, after the score above
# (that change alone moves nothing: the pin holds the primary where it is).
PROMOTION_PIN_ID = "hastack-promotion-pin"


def pin_xml(node: str) -> str:
    """The pin: the promoted role of the clone nowhere but on `node`."""
    pin = PROMOTION_PIN_ID
    # the role goes on the rule: on the constraint it is ignored once there is a rule, and the
    # constraint then kept every instance, replicas too, off the other nodes (seen in a lab)
    return (f'<rsc_location id="{pin}" rsc="{CLUSTER_RESOURCE}-clone">'
            f'<rule id="{pin}-rule" role="Promoted" score="-INFINITY">'
            f'<expression id="{pin}-expr" attribute="#uname" operation="ne" value="{node}"/>'
            f'</rule></rsc_location>')


def pin_command(node: str) -> str:
    return f"cibadmin --modify --allow-create --scope constraints --xml-text '{pin_xml(node)}'"


def move_pin_if_any(node: str) -> str:
    """Shell: move the pin to `node` if there is one (automatic promotion off)."""
    return (f"if cibadmin --query --scope constraints --xpath "
            f"\"//rsc_location[@id='{PROMOTION_PIN_ID}']\" >/dev/null 2>&1; then\n"
            f"  {pin_command(node)}\nfi\n")
