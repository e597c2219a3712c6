"""Automatic failover of the database primary by the cluster (Pacemaker + ocf:heartbeat:mariadb,
fencing through the lab's Redfish device), under steady writes through the site, each
acknowledged by its id (hastack.chaos.dbfailover).

For each fault on the primary of the moment: a replica is promoted by itself, writes resume,
every acknowledged write is on every node (tables equal: CHECKSUM TABLE), no other node took
writes, and the old primary replicates from the new one without a hand on it. Then: a replica
cut off holds commits only until the cluster has lost it and loses nothing (a replica killed
under heavy writes is test_40's), and a
redeploy from the original (now stale) inventory changes no role and loses no row.
"""

from __future__ import annotations

import json
import time

import pytest

from hastack.chaos import dbfailover, primitives
from hastack.lab.lab import Lab as HostLab

from .conftest import in_role, load, more, one_line_error, poll, run


@pytest.fixture(scope="module")
def fleet(lab) -> HostLab:
    names = lab.names("db-primary") + lab.names("db-replica")
    if len(names) < 2:
        pytest.skip("this topology has a single database node: nothing to fail over to")
    return HostLab()


def db_status() -> dict:
    return json.loads(run("db", "status", "--json").stdout)


def node_status(name: str) -> dict:
    """One DB node's line of `hastack db status` now."""
    return next(n for n in db_status()["nodes"] if n["name"] == name)


@pytest.mark.parametrize("fault", dbfailover.FAULTS)
def test_a_failed_primary_is_replaced_and_no_acknowledged_write_is_lost(lab, fleet, fault):
    outcome = dbfailover.run(fleet, fault, log=print)
    print(json.dumps(outcome.summary()))
    assert outcome.new_primary, f"no replica was promoted after {fault}"
    assert outcome.new_primary != outcome.old_primary
    assert outcome.acked
    assert outcome.write_outage_s is not None, "no write was acknowledged after the fault"
    assert outcome.split_brain == []
    assert outcome.rejoined_s is not None, (
        f"{outcome.old_primary} did not come back as a replica of {outcome.new_primary}")
    # every acknowledged write on every node, and the nodes' tables equal
    assert all(not lost for lost in outcome.missing.values()), outcome.missing
    assert len(outcome.checksums) == len(lab.names("db-primary") + lab.names("db-replica"))
    assert len(set(outcome.checksums.values())) == 1, outcome.checksums


def test_a_replica_whose_sql_thread_was_stopped_is_promoted_with_every_acknowledged_write(
        lab, fleet):
    """A replica's IO thread acknowledges (semi-sync) what its SQL thread has not applied yet:
    paused by hand or by the restore drill, the SQL thread leaves acknowledged writes in the
    relay log only. Promoted, the node applies them first (they were lost: 0 of 20 there)."""
    nodes = {n["name"]: n for n in db_status()["nodes"]}
    primary = next(n for n, s in nodes.items() if s["role"] == "primary")
    replicas = [n for n, s in nodes.items() if s["role"] == "replica"]
    for node in replicas:
        fleet.run_checked(node, "mariadb -e 'STOP SLAVE SQL_THREAD'", "pausing the SQL thread")
    acked = []
    with lab.client(lab.vips[0]) as c:
        for i in range(20):
            r = c.post("/messages", json={"author": "paused", "body": f"acknowledged {i}"})
            assert r.status_code == 201, r.text
            acked.append(r.json()["id"])
    primitives.crash_mariadbd(fleet, primary)
    promoted = poll(lambda: dbfailover.primary_now(fleet, replicas), 60, "a promoted replica")
    ids = ",".join(map(str, acked))
    count = fleet.run_checked(promoted[0], "mariadb -B -N", "counting", stdin=(
        f"SELECT COUNT(*) FROM {dbfailover.TABLE} WHERE id IN ({ids})")).strip()
    assert int(count) == len(acked)
    # the old primary comes back as a replica and every replica replicates again
    poll(lambda: all(s["role"] == "primary" or (s["role"] == "replica"
                                                and s["io_running"] == "Yes"
                                                and s["sql_running"] == "Yes")
                     for s in db_status()["nodes"]), 180, "every node serving again")


def test_a_replica_cut_off_is_let_go_once_the_cluster_lost_it_and_nothing_is_lost(
        lab, fleet):
    """A replica cut off keeps its replication connection open on the primary, and semi-sync
    commits wait for it until TCP gives that connection up (~5 s). The replica release
    (hastack-replica-release) ends it on the quorate primary as soon as corosync has lost
    the node: from then on
    commits do not wait, semi-sync says how many replicas still acknowledge, nothing
    acknowledged is lost, and the replica catches up once back (fenced, rejoined)."""
    primary, replicas = in_role("primary")[0], in_role("replica")
    replica = replicas[0]
    since = int(time.time())

    def let_go() -> str | None:
        log = fleet.run_checked(primary, f"journalctl -t hastack-replica-release --since "
                                f"@{since} -o cat --no-pager", "the replica release's log")
        return next((x for x in log.splitlines() if "ended" in x), None)
    with load(lab, lab.vips[0], "/messages", header="location", rate=20, timeout=15.0,
              method="POST", json_body={"author": "replica-cut", "body": "cut"},
              idempotency_keys=True) as bg:
        more(bg, 20, "writes before the cut")
        primitives.cut_link(replica, "private")
        try:
            line = poll(let_go, 30, f"{primary} letting {replica}'s connection go")
            seen = time.monotonic()
            assert line.startswith(f"{replica} lost, this primary quorate: ended its "
                                   "replication connection"), line
            more(bg, 40, "writes while the replica is still cut off")
            now = node_status(primary)
            assert now["semi_sync_replicas"] == len(replicas) - 1, now
            assert now["semi_sync"] == ("on" if len(replicas) > 1 else "off"), now
        finally:
            primitives.restore_link(replica, "private")
    samples = bg.result.samples
    # Until the cluster has lost the node, commits wait for it: the site refuses a write it
    # could not commit in time, and for one health interval after (the primary marked down,
    # router.check_interval, 1 s), with a 503. Once let go, commits stop waiting for it (TCP
    # alone would have held them ~5 s): after that interval none refused, none slow.
    failed = [s for s in samples if s.failed]
    print("refused, s from the cut being seen:",
          [(round(s.scheduled - seen, 2), s.status, s.error) for s in failed])
    assert all(s.status == 503 for s in failed), [(s.status, s.error) for s in failed][:10]
    after = [s for s in samples if s.scheduled >= seen + 1.0]
    assert after and not [s for s in after if s.failed]
    assert max(s.end - s.scheduled for s in after) < 1.0
    acked = sorted(int(s.header.rsplit("/", 1)[1]) for s in samples
                   if s.status == 201 and s.header)
    ids = ",".join(map(str, acked))
    poll(lambda: (s := node_status(replica))["role"] == "replica"
         and s["io_running"] == "Yes" and s["sql_running"] == "Yes", 180,
         f"{replica} replicating again")
    for node in (primary, replica):
        poll(lambda n=node: int(fleet.run_checked(n, "mariadb -B -N", "counting", stdin=(
            f"SELECT COUNT(*) FROM {dbfailover.TABLE} WHERE id IN ({ids})")).strip())
            == len(acked), 60, f"every acknowledged write on {node}")
    poll(lambda: (p := node_status(primary))["semi_sync"] == "on"
         and p["semi_sync_replicas"] == len(replicas), 60,
         "semi-sync on again on the primary, every replica acknowledging")


def test_a_redeploy_from_the_original_inventory_changes_no_role_and_loses_nothing(lab, fleet):
    """The inventory names the first primary only: after a promotion, a deploy from it must
    not make that node writable again, reseed or repoint anything."""
    nodes = {n["name"]: n for n in db_status()["nodes"]}
    first = lab.names("db-primary")[0]
    primary = next(n for n, s in nodes.items() if s["role"] == "primary")
    if primary == first:  # make the inventory stale: promote another node through the engine
        target = next(n for n, s in nodes.items() if s["role"] == "replica")
        run("db", "switchover", target)
        primary = target
    with lab.client(lab.vips[0]) as c:
        r = c.post("/messages", json={"author": "stale", "body": f"before {time.time()}"})
        assert r.status_code == 201, r.text
        row = r.json()["id"]
    gtid = fleet.run_checked(primary, "mariadb -B -N -e 'SELECT @@gtid_binlog_pos'",
                             "gtid").strip()
    run("up", "--force-deploy")  # the lab's inventory still says db_primary: first
    after = {n["name"]: n for n in db_status()["nodes"]}
    assert [n for n, s in after.items() if s["role"] == "primary"] == [primary]
    assert after[first]["role"] == "replica"
    for name in after:
        # a replica waits for the primary's position first (MASTER_GTID_WAIT follows what a
        # node applied as a replica: on the primary itself it would never return 0)
        wait = "" if name == primary else f"SELECT MASTER_GTID_WAIT('{gtid}', 30) = 0; "
        assert fleet.run_checked(name, "mariadb -B -N", "row", stdin=(
            f"{wait}SELECT COUNT(*) FROM {dbfailover.TABLE} WHERE id={row}")).split() == (
            ["1"] if name == primary else ["1", "1"])
    # back to the first primary, so the lab ends as it began
    run("db", "switchover", first)


def test_with_automatic_failover_off_a_lost_primary_waits_for_the_operators_failover(
        lab, fleet):
    """`hastack db auto-failover off` pins the primary: its loss promotes nobody; `hastack db
    failover` promotes the replica holding the last acknowledged write, losing none."""
    line = one_line_error(run("db", "failover", check=False))
    assert "automatic failover is on" in line, line
    run("db", "auto-failover", "off")
    try:
        primary = next(n["name"] for n in db_status()["nodes"] if n["role"] == "primary")
        assert db_status()["cluster"]["view"]["promotion_pin"] == primary
        line = one_line_error(run("db", "failover", check=False))
        assert f"{primary} is a writable primary: nothing to fail over" in line, line
        outcome = dbfailover.run(fleet, "power-off", log=print,
                                 operator=lambda: run("db", "failover"))
        print(json.dumps(outcome.summary()))
        assert outcome.promoted_unasked == []
        assert outcome.new_primary and outcome.new_primary != primary
        assert outcome.write_outage_s is not None, "no write was acknowledged after failover"
        assert outcome.split_brain == []
        assert outcome.rejoined_s is not None, f"{primary} did not come back as a replica"
        assert all(not lost for lost in outcome.missing.values()), outcome.missing
        assert len(set(outcome.checksums.values())) == 1, outcome.checksums
        # the pin went with the promotion: automatic failover stays off
        assert db_status()["cluster"]["view"]["promotion_pin"] == outcome.new_primary
        # a switchover takes the pin along (the lab ends with the primary it began with)
        run("db", "switchover", primary)
        assert db_status()["cluster"]["view"]["promotion_pin"] == primary
        assert [n["name"] for n in db_status()["nodes"] if n["role"] == "primary"] == [primary]
    finally:
        run("db", "auto-failover", "on")
    assert db_status()["cluster"]["view"]["promotion_pin"] is None


def test_a_switchover_to_a_node_that_is_not_a_healthy_replica_is_one_line_and_changes_nothing(
        lab, fleet):
    primary = next(n["name"] for n in db_status()["nodes"] if n["role"] == "primary")
    for target, message in (("web1", "'web1' is not a database node"),
                            (primary, f"{primary} is already the primary")):
        line = one_line_error(run("db", "switchover", target, check=False))
        assert message in line, line
    assert [n["name"] for n in db_status()["nodes"] if n["role"] == "primary"] == [primary]
