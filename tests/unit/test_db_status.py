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

    def set_primary(self, name, console):  # pragma: no cover - not used here
        raise NotImplementedError

    def machine_state(self, name, monitoring):  # pragma: no cover - not used here
        raise NotImplementedError

    def run_on(self, machine, command, timeout=60, stdin=None):
        assert stdin == db.STATUS_SQL
        return subprocess.CompletedProcess([], 0, self.answers[machine], "")


def _status(answers: dict[str, str]) -> dict[str, db.NodeStatus]:
    return {s.name: s for s in db.status(AnsweringFleet(answers))}


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


def test_a_primary_without_replicas_has_semi_sync_disabled():
    nodes = _status({"db1": HEADER + "0\t0-1-7\t\t3\t0\tOFF\t0\tOFF\n",
                     "db2": HEADER + "1\t\t\t1\t0\tOFF\t0\tOFF\n"})
    assert (nodes["db1"].semi_sync, nodes["db1"].semi_sync_replicas) == ("disabled", 0)
    assert nodes["db2"].role == "unconfigured"
    assert IPv4Address(nodes["db1"].address)


# ---- the switchover's scripts (each one SSH round trip while writes are held) --------------

def _run_script(tmp_path, script: str, answer: str) -> tuple[list[str], str]:
    """Run a switchover script with a stand-in `mariadb` that answers `answer` and records
    each call (the SQL is the one thing the script decides)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls"
    fake = bin_dir / "mariadb"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {log}\necho "{answer}"\n')
    fake.chmod(0o755)
    out = subprocess.run(["sh", "-s"], input=script, capture_output=True, text=True,
                         env={"PATH": f"{bin_dir}:/usr/bin:/bin"}, check=True).stdout
    return log.read_text().splitlines(), out


def test_catching_up_changes_nothing_unless_the_target_reached_the_gtid(tmp_path):
    script = db.CATCH_UP_SCRIPT.format(gtid="0-41-77", timeout=30, semi="ON")
    calls, out = _run_script(tmp_path, script, "-1")
    assert out.strip() == "-1"
    assert calls == ["-B -N -e SELECT MASTER_GTID_WAIT('0-41-77', 30)"]


def test_caught_up_the_target_stops_replicating_and_takes_the_semi_sync_role(tmp_path):
    script = db.CATCH_UP_SCRIPT.format(gtid="0-41-77", timeout=30, semi="ON")
    calls, out = _run_script(tmp_path, script, "0")
    assert out.splitlines()[0] == "0"
    assert calls[1] == ("-e STOP SLAVE; RESET SLAVE ALL; "
                        "SET GLOBAL rpl_semi_sync_master_enabled=ON")


def test_stopping_writes_also_writes_the_replica_role_file():
    script = db.STOP_WRITES_SCRIPT.format(role=db._role_file(primary=False))
    assert "SET GLOBAL read_only=ON" in script and "SELECT @@gtid_binlog_pos" in script
    assert (f"cat > {db.ROLE_FILE} <<'HASTACK_ROLE'\n# managed by hastack: replica\n"
            "[mariadbd]\nread_only = ON\nrpl_semi_sync_master_enabled = OFF\nHASTACK_ROLE\n"
            in script)
