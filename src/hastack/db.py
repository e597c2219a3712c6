"""The database tier seen from the admin bastion: status of each node, planned switchover.

Everything goes through SSH to the nodes and the `mariadb` client there (root over the local
socket), so no database port is opened to the host.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from typing import Any

from rich.console import Console

from hastack.errors import HastackError
from hastack.fleet import Fleet
from hastack.topology import Topology

ROLE_FILE = "/etc/mysql/mariadb.conf.d/61-hastack-role.cnf"  # the database role's own file


def _global_status(name: str) -> str:
    return (f"(SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_STATUS "
            f"WHERE VARIABLE_NAME='{name}')")


STATUS_SQL = (
    "SELECT @@read_only, @@gtid_binlog_pos, @@gtid_slave_pos, "
    f"{_global_status('THREADS_RUNNING')}, @@rpl_semi_sync_master_enabled, "
    f"{_global_status('RPL_SEMI_SYNC_MASTER_STATUS')}, "
    f"{_global_status('RPL_SEMI_SYNC_MASTER_CLIENTS')}, "
    f"{_global_status('RPL_SEMI_SYNC_SLAVE_STATUS')}; SHOW SLAVE STATUS\\G"
)


@dataclass
class NodeStatus:
    name: str
    address: str
    role: str  # primary | replica | down | unconfigured
    read_only: bool | None = None
    gtid_binlog_pos: str = ""
    gtid_slave_pos: str = ""
    replicating_from: str = ""
    io_running: str = ""
    sql_running: str = ""
    lag_seconds: int | None = None
    threads_running: int | None = None
    # Semi-synchronous replication. A primary: "on" (a commit is answered once a replica
    # has it), "off" (it went on without: no replica acknowledged in time) or "disabled"
    # (not configured: no replicas); semi_sync_replicas acknowledging it. A replica: "on"
    # when its IO thread acknowledges what it receives.
    semi_sync: str = ""
    semi_sync_replicas: int | None = None
    error: str = ""


def _sql(fleet: Fleet, node: str, sql: str, timeout: float = 30) -> str:
    """Run SQL as root on a node; the SQL goes on stdin (no password on a command line)."""
    return fleet.run_checked(node, "mariadb -B -N", "mariadb", timeout=timeout, stdin=sql)


def db_nodes(topo: Topology) -> list[str]:
    return [m.name for m in topo.machines if {"db-primary", "db-replica"} & set(m.roles)]


def node_status(fleet: Fleet, topo: Topology, node: str) -> NodeStatus:
    m = topo.machine(node)
    st = NodeStatus(node, str(m.private_address), "down")
    try:
        out = fleet.run_on(node, "mariadb -B", timeout=10, stdin=STATUS_SQL)
    except Exception as exc:  # noqa: BLE001 - a node that cannot be asked is reported, not fatal
        st.error = str(exc)
        return st
    if out.returncode != 0:
        st.error = (out.stderr.strip() or "unreachable").splitlines()[-1]
        return st
    lines = out.stdout.splitlines()
    values = lines[1].split("\t")
    st.read_only = values[0] == "1"
    st.gtid_binlog_pos, st.gtid_slave_pos = values[1], values[2]
    st.threads_running = int(values[3])
    enabled, master_on, clients, slave_on = values[4:8]
    if st.read_only:
        st.semi_sync = "on" if slave_on == "ON" else "off"
    else:
        st.semi_sync = "disabled" if enabled != "1" else ("on" if master_on == "ON" else "off")
        st.semi_sync_replicas = int(clients)
    slave = {}
    for line in lines[2:]:
        if ":" in line and not line.startswith("*"):
            key, _, value = line.partition(":")
            slave[key.strip()] = value.strip()
    if slave.get("Master_Host"):
        st.replicating_from = slave["Master_Host"]
        st.io_running, st.sql_running = slave["Slave_IO_Running"], slave["Slave_SQL_Running"]
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
    return [node_status(fleet, topo, n) for n in db_nodes(topo)]


def status_dicts(fleet: Fleet) -> list[dict[str, Any]]:
    return [asdict(s) for s in status(fleet)]


def switchover(fleet: Fleet, target: str, console: Console, catch_up_timeout: float = 30.0
               ) -> dict[str, float]:
    """Planned promotion of a replica, losing no acknowledged write.

    1. checks: target replicates from the primary, threads running;
    2. stop writes: the primary becomes read_only (the site retries refused writes) and its
       role file says replica;
    3. wait until the target has applied the primary's last GTID (MASTER_GTID_WAIT), then
       it stops replicating;
    4. side by side: the old primary and every other replica are repointed at it (GTID,
       slave_pos), while it waits (up to 1 s) until one of them acknowledges as a semi-sync
       replica (its first commits then need no semi-sync timeout, which held writes 1 s
       longer and went async for a moment), then becomes writable;
    5. its role file says primary;
    6. record the new roles (the lab's record, or the inventory file) and redeploy so
       configs agree (not in the outage); a fleet that could not record them refuses at 1.
    """
    nodes = {s.name: s for s in status(fleet)}
    if target not in nodes:
        raise HastackError(f"'{target}' is not a database node; nodes: {', '.join(nodes)}")
    primaries = [s for s in nodes.values() if s.role == "primary"]
    if len(primaries) != 1:
        raise HastackError(f"expected exactly one writable primary, found "
                           f"{', '.join(p.name for p in primaries) or 'none'}; fix that first")
    old = primaries[0]
    new = nodes[target]
    if new.name == old.name:
        raise HastackError(f"{target} is already the primary")
    if new.role != "replica" or new.replicating_from != old.address:
        raise HastackError(f"{target} does not replicate from {old.name}; cannot promote it")
    if new.io_running != "Yes" or new.sql_running != "Yes":
        raise HastackError(f"{target}'s replication is not running (IO {new.io_running}, "
                           f"SQL {new.sql_running}); fix it before a switchover")
    fleet.check_set_primary(target)
    repl_user, repl_password = _replication_credentials(fleet)
    timings: dict[str, float] = {}
    started = time.monotonic()

    console.print(f"switchover {old.name} -> {target}: stopping writes on {old.name}")
    # Writes are held from here until the target is writable: three SSH round trips in a
    # row (each one script), the last two steps side by side. Only the primary waits for
    # semi-sync acknowledgements (a replica doing so would stall its own SQL thread): that
    # role moves with it.
    out = fleet.run_checked(old.name, "sh -s", f"stopping writes on {old.name}",
                            stdin=STOP_WRITES_SCRIPT.format(role=_role_file(primary=False)))
    semi, final = [line.strip() for line in out.splitlines()[:2]]
    semi_sync = semi == "1"
    waited = fleet.run_checked(
        target, "sh -s", f"catching up on {target}", timeout=catch_up_timeout + 15,
        stdin=CATCH_UP_SCRIPT.format(gtid=final, timeout=catch_up_timeout,
                                     semi="ON" if semi_sync else "OFF")).strip()
    if waited != "0":
        _sql(fleet, old.name, "SET GLOBAL read_only=OFF")
        _persist_role(fleet, old.name, primary=True, semi_sync=semi_sync)
        raise HastackError(f"{target} did not reach {old.name}'s position {final} within "
                           f"{catch_up_timeout:.0f} s; writes re-enabled on {old.name}, "
                           "nothing changed")
    timings["caught_up_s"] = time.monotonic() - started
    change = (f"CHANGE MASTER TO MASTER_HOST='{new.address}', MASTER_PORT=3306, "
              f"MASTER_USER='{repl_user}', MASTER_PASSWORD='{repl_password}', "
              "MASTER_USE_GTID=slave_pos, MASTER_CONNECT_RETRY=1")
    repoint = {old.name: "SET GLOBAL rpl_semi_sync_master_enabled=OFF; "
                         f"SET GLOBAL gtid_slave_pos=@@gtid_binlog_pos; {change}; START SLAVE"}
    for other in nodes.values():
        if other.name not in (old.name, target) and other.role == "replica":
            repoint[other.name] = f"STOP SLAVE; {change}; START SLAVE"

    def repoint_all() -> float:
        with ThreadPoolExecutor(len(repoint)) as pool:
            for done in [pool.submit(_sql, fleet, n, sql) for n, sql in repoint.items()]:
                done.result()
        return time.monotonic() - started

    # The target waits (up to 1 s) for a repointed replica to acknowledge it as a semi-sync
    # replica before it takes writes, so its first commits need no semi-sync timeout.
    with ThreadPoolExecutor(2) as pool:
        repointed = pool.submit(repoint_all)
        promoted = pool.submit(_promote_once_acknowledged, fleet, target)
        promoted.result()
        timings["promoted_s"] = time.monotonic() - started
        timings["repointed_s"] = repointed.result()
    _persist_role(fleet, target, primary=True, semi_sync=semi_sync)
    console.print(f"{target} is the primary (writable {timings['promoted_s']:.2f} s after "
                  f"writes stopped, at GTID {final}); replicas follow it; recording the new "
                  "roles and redeploying")

    fleet.set_primary(target, console)
    timings["redeployed_s"] = time.monotonic() - started
    return timings


# On the old primary (one SSH round trip): no more writes, its last GTID, and its role file
# says replica (a reboot from here on must not make it writable). Prints whether it waited
# for semi-sync acknowledgements, then the GTID.
STOP_WRITES_SCRIPT = """set -e
mariadb -B -N -e 'SELECT @@rpl_semi_sync_master_enabled; SET GLOBAL read_only=ON;
  FLUSH TABLES; SELECT @@gtid_binlog_pos'
cat > ROLE_FILE <<'HASTACK_ROLE'
{role}HASTACK_ROLE
""".replace("ROLE_FILE", ROLE_FILE)

# On the target (one SSH round trip): wait until it has applied the old primary's last GTID;
# only then stop replicating and take the primary's semi-sync role. Prints MASTER_GTID_WAIT's
# answer (0: caught up; -1: timed out, and nothing was changed).
CATCH_UP_SCRIPT = """set -e
waited=$(mariadb -B -N -e "SELECT MASTER_GTID_WAIT('{gtid}', {timeout})")
echo "$waited"
[ "$waited" = 0 ] || exit 0
mariadb -e 'STOP SLAVE; RESET SLAVE ALL; SET GLOBAL rpl_semi_sync_master_enabled={semi}'
"""


# On the target itself (one SSH round trip): until a replica acknowledges it as a semi-sync
# replica (if semi-sync is on; at most 1 s by the clock: a CI run counted 40 tries as 5.7 s
# while writes were held), then writable.
PROMOTE_SCRIPT = """
end=$(( $(date +%s%N) / 1000000 + 1000 ))
while [ $(( $(date +%s%N) / 1000000 )) -lt $end ]; do
  set -- $(mariadb -B -N -e "SELECT @@rpl_semi_sync_master_enabled, (SELECT VARIABLE_VALUE \\
    FROM information_schema.GLOBAL_STATUS WHERE VARIABLE_NAME='RPL_SEMI_SYNC_MASTER_CLIENTS')")
  [ "$1" != 1 ] || [ "$2" -gt 0 ] && break
  sleep 0.05
done
mariadb -e 'SET GLOBAL read_only=OFF'
"""


def _promote_once_acknowledged(fleet: Fleet, node: str) -> None:
    fleet.run_checked(node, "sh -s", f"promoting {node}", stdin=PROMOTE_SCRIPT)


def _role_file(primary: bool, semi_sync: bool = False) -> str:
    """The node's role file, as the database role writes it."""
    return (f"# managed by hastack: {'primary' if primary else 'replica'}\n[mariadbd]\n"
            f"read_only = {'OFF' if primary else 'ON'}\n"
            f"rpl_semi_sync_master_enabled = {'ON' if primary and semi_sync else 'OFF'}\n")


def _persist_role(fleet: Fleet, node: str, primary: bool, semi_sync: bool = False) -> None:
    """Write the node's role where MariaDB reads it at start, as the deploy would."""
    fleet.run_checked(node, f"cat > {ROLE_FILE}", f"writing {ROLE_FILE}",
                      stdin=_role_file(primary, semi_sync))


def _replication_credentials(fleet: Fleet) -> tuple[str, str]:
    secret = fleet.secrets / "db_repl"
    if not secret.exists():
        raise HastackError(f"{secret} is missing; was this environment deployed "
                           "(or is --secrets-dir needed)?")
    # the password lookup stores "password salt=..." on one line
    return "repl", secret.read_text().split()[0]
