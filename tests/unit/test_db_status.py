"""`hastack db status` reads each node's answer to STATUS_SQL: roles and semi-sync state."""

from __future__ import annotations

import subprocess
from ipaddress import IPv4Address

from hastack import db, topology
from hastack.fleet import Fleet

HEADER = "@@read_only\t@@gtid_binlog_pos\t...\n"
REPLICA_SLAVE_STATUS = """*************************** 1. row ***************************
                Slave_IO_State: Waiting for master to send event
                   Master_Host: 198.19.0.41
              Slave_IO_Running: Yes
             Slave_SQL_Running: Yes
         Seconds_Behind_Master: 0
"""


class AnsweringFleet(Fleet):
    """Each node answers STATUS_SQL with the text given for it."""

    def __init__(self, answers: dict[str, str]):
        self.answers = answers
        self.topo = topology.load(None)

    def require_topology(self):
        return self.topo

    def ssh_argv(self, machine, command=None):  # pragma: no cover - not used here
        raise NotImplementedError

    def machine_state(self, name, monitoring):  # pragma: no cover - not used here
        raise NotImplementedError

    def run_on(self, machine, command, timeout=60, stdin=None):
        assert (command, stdin) == (db.STATUS_COMMAND, db.STATUS_SQL)
        return subprocess.CompletedProcess([], 0, self.answers[machine], "")


def _status(answers: dict[str, str], config_time: int = 1_700_000_000,
            started: int = 1_700_000_100) -> dict[str, db.NodeStatus]:
    """Each node's answer to STATUS_COMMAND: the configuration's mtime, then STATUS_SQL's
    rows (the server's start time as the first row's last column)."""
    def full(text: str) -> str:
        header, values, rest = (text + "\n").split("\n", 2)
        return f"{config_time}\n{header}\n{values}\t{started}\n{rest}"
    return {s.name: s for s in db.status(AnsweringFleet({k: full(v)
                                                          for k, v in answers.items()}))}


def test_a_primary_in_semi_sync_and_its_acknowledging_replica():
    nodes = _status({
        "db1": HEADER + "0\t0-1-42\t\t3\t1\tON\t1\tOFF\n",
        "db2": HEADER + "1\t0-1-42\t0-1-42\t2\t1\tOFF\t0\tON\n" + REPLICA_SLAVE_STATUS})
    assert (nodes["db1"].role, nodes["db1"].semi_sync, nodes["db1"].semi_sync_replicas) == (
        "primary", "on", 1)
    assert (nodes["db2"].role, nodes["db2"].semi_sync, nodes["db2"].semi_sync_replicas) == (
        "replica", "on", None)
    assert nodes["db2"].replicating_from == "198.19.0.41" and nodes["db2"].lag_seconds == 0


def test_a_primary_that_went_on_without_a_replica_says_off():
    nodes = _status({
        "db1": HEADER + "0\t0-1-50\t\t3\t1\tOFF\t0\tOFF\n",
        "db2": HEADER + "1\t0-1-42\t0-1-42\t2\t1\tOFF\t0\tOFF\n" + REPLICA_SLAVE_STATUS})
    assert (nodes["db1"].semi_sync, nodes["db1"].semi_sync_replicas) == ("off", 0)
    assert nodes["db2"].semi_sync == "off"


def test_a_primary_with_no_replica_connected_says_off_though_the_server_says_on():
    # rpl_semi_sync_master_wait_no_slave=OFF (the cluster's primaries): with no semi-sync
    # client the primary does not wait, and Rpl_semi_sync_master_status stays ON
    nodes = _status({"db1": HEADER + "0\t0-1-50\t\t3\t1\tON\t0\tOFF\n",
                     "db2": HEADER + "1\t0-1-42\t0-1-42\t2\t1\tOFF\t0\tOFF\n"})
    assert (nodes["db1"].semi_sync, nodes["db1"].semi_sync_replicas) == ("off", 0)


def test_a_primary_without_replicas_has_semi_sync_disabled():
    nodes = _status({"db1": HEADER + "0\t0-1-7\t\t3\t0\tOFF\t0\tOFF\n",
                     "db2": HEADER + "1\t\t\t1\t0\tOFF\t0\tOFF\n"})
    assert (nodes["db1"].semi_sync, nodes["db1"].semi_sync_replicas) == ("disabled", 0)
    assert nodes["db2"].role == "unconfigured"
    assert IPv4Address(nodes["db1"].address)


# ---- the switchover's request to the cluster (one SSH round trip) ------------------------

def test_the_switchover_gives_the_target_one_more_than_the_highest_score(tmp_path):
    """One CIB change, above every other node's score (the agent's 100, or an earlier
    switchover's): Pacemaker moves the promoted role there in one transition."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    fake = bin_dir / "crm_attribute"
    # db1 holds 100 (elected), db3 230 (an earlier switchover), db4 none (query fails)
    fake.write_text(f"""#!/bin/sh
echo "$*" >> {log}
case "$*" in
  *"--node db1"*--query*) echo 100 ;;
  *"--node db3"*--query*) echo 230 ;;
  *--query*) echo "Error performing operation: No such device or address" >&2; exit 105 ;;
esac
""")
    fake.chmod(0o755)
    script = db.PROMOTION_SCORE_SCRIPT.format(resource="db", target="db2", pin_step="",
                                              others="db1 db3 db4")
    subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True,
                   env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, check=True)
    updates = [c for c in log.read_text().splitlines() if "--update" in c]
    assert updates == ["--promotion=db --node db2 --lifetime reboot --update 231"]


def test_a_configuration_newer_than_the_server_is_a_restart_pending():
    answers = {"db1": HEADER + "0\t0-1-7\t\t3\t1\tON\t1\tOFF\n",
               "db2": HEADER + "1\t0-1-7\t0-1-7\t1\t1\tOFF\t0\tON\n" + REPLICA_SLAVE_STATUS}
    assert not any(n.restart_pending for n in _status(answers).values())
    pending = _status(answers, config_time=1_700_000_200, started=1_700_000_100)
    assert all(n.restart_pending for n in pending.values())


def test_a_replica_that_diverged_says_so():
    stopped = REPLICA_SLAVE_STATUS.replace("Slave_SQL_Running: Yes", "Slave_SQL_Running: No") + (
        "                 Last_IO_Errno: 0\n                 Last_IO_Error: \n"
        "                Last_SQL_Errno: 1950\n                Last_SQL_Error: An attempt was "
        "made to binlog GTID 0-41-653 which would create an out-of-order sequence number with "
        "existing GTID 0-42-653, and gtid strict mode is enabled\n")
    nodes = _status({"db1": HEADER + "0\t0-41-653\t\t3\t1\tON\t0\tOFF\n",
                     "db2": HEADER + "1\t0-42-653\t0-41-652\t2\t1\tOFF\t0\tON\n" + stopped})
    assert nodes["db2"].diverged
    assert nodes["db2"].replication_error.startswith("1950: An attempt was made to binlog GTID")
    assert not nodes["db1"].diverged and nodes["db1"].replication_error == ""
