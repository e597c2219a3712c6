"""The operator's failover: which replica it promotes, what it refuses; the pin it moves."""

from __future__ import annotations

import subprocess

import pytest

from hastack import cluster, db
from hastack.db import NodeStatus
from hastack.errors import HastackError
from hastack.promotion import choose_target


def node(name: str, role: str, seq: int = 0, received: int = 0) -> NodeStatus:
    return NodeStatus(name, "198.19.0.1", role, read_only=role != "primary",
                      gtid_binlog_pos=f"0-41-{seq}" if seq else "",
                      gtid_slave_pos=f"0-41-{seq}" if seq else "",
                      gtid_io_pos=f"0-41-{received}" if received else "")


def test_the_replica_holding_the_last_write_is_chosen():
    nodes = [node("db1", "down"), node("db2", "replica", 90), node("db3", "replica", 95)]
    assert choose_target(nodes) == "db3"


def test_what_a_replica_received_but_not_applied_counts():
    nodes = [node("db1", "down"), node("db2", "replica", 90, received=99),
             node("db3", "replica", 95)]
    assert choose_target(nodes) == "db2"


def test_a_named_replica_as_far_as_the_best_is_taken():
    nodes = [node("db1", "down"), node("db2", "replica", 95), node("db3", "replica", 95)]
    assert choose_target(nodes, "db2") == "db2"


@pytest.mark.parametrize(("nodes", "requested", "message"), [
    ([node("db1", "primary", 9), node("db2", "replica", 9)], None,
     "db1 is a writable primary: nothing to fail over"),
    ([node("db1", "down"), node("db2", "replica", 9)], "db7", "'db7' is not a database node"),
    ([node("db1", "down"), node("db2", "down")], None, "no DB node answers as a replica"),
    ([node("db1", "down"), node("db2", "down"), node("db3", "replica", 9)], None,
     "db1, db2 do(es) not answer and may hold the last acknowledged writes"),
    ([node("db1", "down"), node("db2", "replica", 8), node("db3", "replica", 9)], "db2",
     "db2 holds less than db3 (GTID sequence 8 < 9)"),
    ([node("db1", "down"), node("db2", "replica", 8)], "db1", "db1 is down, not a replica"),
])
def test_what_could_lose_writes_is_refused(nodes, requested, message):
    with pytest.raises(HastackError) as exc:
        choose_target(nodes, requested)
    assert message in str(exc.value)


def test_force_promotes_among_the_nodes_that_answer():
    nodes = [node("db1", "down"), node("db2", "down"), node("db3", "replica", 9)]
    assert choose_target(nodes, force=True) == "db3"
    nodes = [node("db1", "down"), node("db2", "replica", 8), node("db3", "replica", 9)]
    assert choose_target(nodes, "db2", force=True) == "db2"


CONSTRAINTS = f"""<constraints>
  <rsc_location id="fence-db1-not-on-db1" rsc="fence-db1" node="db1" score="-INFINITY"/>
  <rsc_location id="cli-ban-db-clone-on-db2" rsc="db-clone" role="Started" node="db2"
                score="-INFINITY"/>
  {db.pin_xml("db3")}
</constraints>"""


def test_the_pin_and_the_bans_are_read_from_the_constraints():
    seen = cluster.parse_constraints(CONSTRAINTS)
    assert seen["promotion_pin"] == "db3"
    assert seen["bans"] == [{"id": "cli-ban-db-clone-on-db2", "resource": "db-clone",
                             "node": "db2", "role": "Started"}]
    assert cluster.parse_constraints("<constraints/>")["promotion_pin"] is None


def test_a_switchover_moves_the_pin_only_when_there_is_one(tmp_path):
    """The shell step of the switchover script against a fake cibadmin."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "calls"
    fake = bin_dir / "cibadmin"
    fake.write_text(f"""#!/bin/sh
echo "$*" >> {log}
case "$*" in *--xpath*) [ -e {tmp_path}/pinned ] ;; esac
""")
    fake.chmod(0o755)

    def run() -> list[str]:
        log.write_text("")
        subprocess.run(["sh", "-s"], input=db.move_pin_if_any("db2"), text=True, check=True,
                       env={"PATH": f"{bin_dir}:/usr/bin:/bin"})
        return log.read_text().splitlines()

    assert [c for c in run() if "--modify" in c] == []
    (tmp_path / "pinned").touch()
    modify = [c for c in run() if "--modify" in c]
    assert len(modify) == 1 and 'value="db2"' in modify[0]
