"""Re-seed a DB node whose data can no longer follow the primary, through the cluster.

A node whose binary log holds a transaction the primary never had (committed alone before it
was fenced, or written by hand on a replica) cannot replicate again: "GTID ... not in the
master's binlog", or an out-of-order GTID stops its SQL thread, and the cluster fails to run it.
Its data is replaced by a full backup taken now by the backup machine (from a healthy replica,
else the primary; never from this node, which the cluster keeps stopped meanwhile with a ban),
its own data is kept aside (DIVERGED, the one before it removed), replication is set to start
at the backup's GTID, and the cluster starts it again as a replica.
"""

from __future__ import annotations

import subprocess
import time

from rich.console import Console

from hastack import backup, db, dbrestart
from hastack.errors import HastackError
from hastack.fleet import Fleet

DATADIR = "/var/lib/mysql"
INCOMING = "/var/lib/mysql.reseed"
DIVERGED = "/var/lib/mysql.diverged"
BAN_LIFETIME = "PT30M"  # a backup and its copy fit in it; a ban left behind expires

RECEIVE = f"set -e; rm -rf {INCOMING}; mkdir -m 700 {INCOMING}; tar -xf - -C {INCOMING}"

# The copied data in place of the node's own, and replication set to start at the backup's
# GTID, on a private server (no network, no replication) that stops again at once.
SWAP = """set -e
test -d {incoming}
rm -rf {diverged}
mv {datadir} {diverged}
mv {incoming} {datadir}
chown -R mysql:mysql {datadir}
sock=/run/mysqld/hastack-reseed.sock
mariadbd --defaults-file=/etc/mysql/my.cnf --user=mysql --skip-networking --skip-slave-start \\
  --socket=$sock --pid-file=/run/mysqld/hastack-reseed.pid \\
  --log-error=/var/log/mysql/hastack-reseed.log </dev/null >/dev/null 2>&1 &
server=$!
# never left running outside the cluster, whatever fails below
trap 'kill $server 2>/dev/null || true; wait $server 2>/dev/null || true' EXIT
for i in $(seq 1 240); do
  mariadb --socket=$sock -e 'SELECT 1' >/dev/null 2>&1 && break
  kill -0 $server 2>/dev/null || {{ tail -n 5 /var/log/mysql/hastack-reseed.log >&2; exit 1; }}
  sleep 0.5
done
mariadb --socket=$sock -e "RESET SLAVE ALL; SET GLOBAL gtid_slave_pos = '{gtid}'"
mariadb-admin --socket=$sock shutdown
wait $server
"""


def _ban(fleet: Fleet, node: str, how: list[str], what: str) -> None:
    fleet.run_checked(node, ["crm_resource", "--resource", dbrestart.CLONE, *how, "--node",
                             node, "--quiet"], what)


def _ship(fleet: Fleet, source: str, name: str, node: str) -> None:
    """The prepared backup from the backup machine to the node, piped through here."""
    sender = subprocess.Popen(fleet.ssh_argv(source, ["hastack-db-backup", "ship", name]),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert sender.stdout is not None
    received = subprocess.run(fleet.ssh_argv(node, RECEIVE), stdin=sender.stdout,
                              capture_output=True, text=True, timeout=3600)
    sender.stdout.close()
    sent_err = sender.stderr.read().decode(errors="replace") if sender.stderr else ""
    if sender.wait() != 0 or received.returncode != 0:
        detail = (sent_err.strip() or received.stderr.strip() or "no output").splitlines()[-1]
        raise HastackError(f"copying backup {name} from {source} to {node} failed: {detail}")


def reseed(fleet: Fleet, node: str, console: Console, timeout: float = 300.0
           ) -> dict[str, float | str]:
    """Replace a replica's data by a fresh full backup; back once it replicates again."""
    if db.sole_primary({n.name: n for n in db.status(fleet)}, node).name == node:
        raise HastackError(f"{node} is the primary: `hastack db switchover` to another node "
                           "first, if its data is really the one to throw away")
    source = backup.backup_machine(fleet)  # checked before anything changes
    topo = fleet.require_topology()
    started = time.monotonic()
    console.print(f"{node}: stopped by the cluster (a ban) while its data is replaced")
    _ban(fleet, node, ["--ban", "--lifetime", BAN_LIFETIME], f"banning MariaDB from {node}")
    try:
        dbrestart.wait_for(f"the cluster stopping {node}'s MariaDB",
                           lambda: db.node_status(fleet, topo, node).role == "down", timeout)
        taken = backup.take(fleet)
        console.print(f"backup {taken['name']} taken from {taken['source']} at GTID "
                      f"{taken['gtid']}; copying it to {node}")
        _ship(fleet, source, taken["name"], node)
        fleet.run_checked(node, "sh -s", f"putting the copy in place on {node}", timeout=600,
                          stdin=SWAP.format(incoming=INCOMING, diverged=DIVERGED,
                                            datadir=DATADIR, gtid=taken["gtid"]))
    finally:
        _ban(fleet, node, ["--clear"], f"clearing the ban of {node}")
    # forget its failures, so the cluster starts it now rather than after failure-timeout
    _ban(fleet, node, ["--cleanup"], f"clearing {node}'s failures")

    dbrestart.wait_for(f"{node} replicating from the primary",
                       lambda: dbrestart.caught_up(fleet, topo, node), timeout)
    took = time.monotonic() - started
    console.print(f"{node} replicates again from GTID {taken['gtid']} ({took:.1f} s); its "
                  f"old data is kept in {DIVERGED}")
    return {"node": node, "backup": taken["name"], "gtid": taken["gtid"],
            "seconds": round(took, 2)}
