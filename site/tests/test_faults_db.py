"""Database machines that go silent, with real servers: latency of reads and writes.

A powered-off machine sends nothing back, so every connect and read towards it hangs until
its timeout. Here that is a SIGSTOPped mariadbd (open connections stop answering, new ones
get no greeting) or a port that never answers (faults.py), all on 127.0.0.1.

Wanted: with the primary gone, reads carry on from the replica at normal latency and
writes are refused with a clean 503 + Retry-After within a second; with a replica gone,
reads move to the primary; and at most one request (the one that finds the node dead) waits
on a dead node's timeout, not one per health interval.
"""

from __future__ import annotations

import time
import uuid

import pytest
from prometheus_client import REGISTRY

from faults import FullBacklog, SilentListener, stopped, wait_for
from mariadb_lab import DB_NAME

LISTING = "/api/messages?limit=5"
# A request that waited on a dead node: a request's own timeouts are 1 s (connect, and
# again the handshake) and 2 s (read); nothing else here takes anywhere near that long.
STUCK = 0.9
# Normal latency: a few ms, up to a few tens on a busy test machine.
NORMAL_P99 = 0.25
# Long enough for two health checks (1 s apart) of the dead node to come and go.
WATCH = 2.5


def unique() -> str:
    return f"bh-{uuid.uuid4().hex[:12]}"


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def timed(call):
    started = time.monotonic()
    response = call()
    return time.monotonic() - started, response


def p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def stored(server, bodies: list[str]) -> int:
    if not bodies:
        return 0
    marks = ", ".join(["%s"] * len(bodies))
    return server.sql(
        f"SELECT COUNT(*) AS n FROM `{DB_NAME}`.messages WHERE body IN ({marks})", args=bodies
    )[0]["n"]


def replication(client) -> dict:
    """The replica's replication as the app's router last saw it (from /readyz)."""
    nodes = client.get("/readyz").get_json()["nodes"]
    return next(n["replication"] for n in nodes if n["configured_role"] == "replica")


def report(what: str, reads: list[float], writes: list[float]) -> None:
    """Figures for the README (shown with pytest -rP)."""
    print(
        f"{what}: {len(reads)} reads max {max(reads):.3f}s p99 {p99(reads):.3f}s; "
        f"{len(writes)} writes max {max(writes):.3f}s p99 {p99(writes):.3f}s; "
        f"waited on a dead node (>{STUCK}s): {sum(t > STUCK for t in reads + writes)}"
    )


def test_primary_black_hole_reads_carry_on_and_writes_fail_fast(make_app, lab):
    client = make_app().test_client()
    kept = unique()
    assert client.post("/messages", json={"author": "bh", "body": kept}).status_code == 201
    assert client.get(LISTING).headers["X-DB-Role"] == "replica"
    lab.wait_replica_caught_up()
    refused: list[str] = []
    stale_reads = sample("foobar_db_stale_reads_total")

    def watch(seconds: float) -> tuple[list[float], list[float]]:
        reads, writes = [], []
        until = time.monotonic() + seconds
        while time.monotonic() < until:
            took, page = timed(lambda: client.get("/"))
            assert (page.status_code, page.headers["X-DB-Role"]) == (200, "replica")
            assert kept in page.text  # read-your-writes still holds (the cookie)
            reads.append(took)
            body = unique()
            took, post = timed(lambda: client.post("/messages", json={"author": "b", "body": body}))
            assert post.status_code == 503, post.text
            assert post.headers["Retry-After"] == "1"
            assert "X-DB" not in post.headers
            refused.append(body)
            writes.append(took)
        return reads, writes

    with stopped(lab.primary):
        # Phase 1: the replica has not noticed yet (its IO thread still says Yes).
        reads, writes = watch(WATCH)
        report("primary SIGSTOPped, replica unaware", reads, writes)
        # The write that found the primary silent waited for the answer to its BEGIN
        # (0.5 s: a live server answers at once); the writes after it did not even try.
        # Every write was refused within a second, and reads never noticed.
        assert max(writes) < 1.0
        assert max(reads) < STUCK and p99(reads) < NORMAL_P99

        # Phase 2: the replica's IO thread reconnects and hangs ("Connecting"), as it does
        # once slave_net_timeout notices a dead primary. Its data is still the newest there
        # is: reads carry on from it.
        lab.replica.sql("STOP SLAVE IO_THREAD", "START SLAVE IO_THREAD")
        wait_for(lambda: replication(client)["healthy"] is False, 10,
                 "the app to see the replica's IO thread hang")
        assert replication(client)["io_running"] == "Connecting"
        reads, writes = watch(WATCH)
        report("primary SIGSTOPped, replica IO thread Connecting", reads, writes)
        assert max(writes) < 1.0 and max(reads) < STUCK
        assert p99(reads) < NORMAL_P99
        assert sample("foobar_db_stale_reads_total") == stale_reads + len(reads)

    # The primary answers again: writes are accepted within a few health intervals.
    body = unique()
    ok = wait_for(
        lambda: client.post("/messages", json={"author": "b", "body": body}).status_code == 201,
        10,
        "writes to be accepted again",
        interval=0.05,
    )
    assert ok
    lab.wait_replica_caught_up()
    assert stored(lab.primary, [body]) == 1
    assert stored(lab.primary, refused) == 0  # a 503 here stored nothing


def test_replica_black_hole_costs_one_slow_read(make_app, lab):
    client = make_app().test_client()
    assert client.get(LISTING).headers["X-DB-Role"] == "replica"
    reads, writes = [], []
    with stopped(lab.replica):
        until = time.monotonic() + 1 + WATCH  # the first read may take 0.5 s of it
        while time.monotonic() < until:
            took, listing = timed(lambda: client.get(LISTING))
            assert listing.status_code == 200
            reads.append(took)
            if took < STUCK:
                assert listing.headers["X-DB-Role"] == "primary"
            body = unique()
            took, post = timed(lambda: client.post("/messages", json={"author": "r", "body": body}))
            assert post.status_code == 201
            writes.append(took)
        report("replica SIGSTOPped", reads, writes)
    # Only the read that found the replica silent waited, and only the replica read timeout
    # (0.5 s, not the 2 s read timeout), then went to the primary: the replica was marked
    # down then, and its health checks run in the background.
    assert sum(t > 0.4 for t in reads) <= 1 and max(reads) < STUCK
    assert max(writes) < STUCK and p99(writes) < NORMAL_P99
    assert p99(sorted(reads)[:-1]) < NORMAL_P99
    lab.wait_replica_caught_up()
    wait_for(lambda: client.get(LISTING).headers["X-DB-Role"] == "replica", 10,
             "reads to return to the replica", interval=0.05)


@pytest.mark.parametrize("dead_kind", [SilentListener, FullBacklog])
def test_a_node_dead_from_the_start_slows_nothing_but_the_first_look(make_app, lab, dead_kind):
    with dead_kind() as dead:
        app = make_app(env={"FOOBAR_DB_REPLICAS": f"{lab.replica.address},{dead.address}"})
        client = app.test_client()
        # The first look at the nodes waits for every node's first answer: the dead one's
        # is its check timeout (0.5 s), once per process.
        took, first = timed(lambda: client.get(LISTING))
        assert first.status_code == 200 and took < 1.5
        assert client.post("/messages", json={"author": "d", "body": unique()}).status_code == 201
        reads, writes = [], []
        until = time.monotonic() + WATCH
        while time.monotonic() < until:
            took, listing = timed(lambda: client.get(LISTING))
            assert (listing.status_code, listing.headers["X-DB"]) == (200, lab.replica.address)
            reads.append(took)
            took, post = timed(lambda: client.post("/messages", json={"author": "d",
                                                                       "body": unique()}))
            assert (post.status_code, post.headers["X-DB"]) == (201, lab.primary.address)
            writes.append(took)
        report(f"third node a {dead_kind.__name__}", reads, writes)
        assert max(reads + writes) < STUCK
        assert p99(reads) < NORMAL_P99 and p99(writes) < NORMAL_P99
        ready = client.get("/readyz").get_json()
        assert {n["node"]: n["ok"] for n in ready["nodes"]}[dead.address] is False


def test_a_dead_configured_primary_is_only_a_hint(make_app, lab):
    # The configured primary is a black hole; the writable node is listed as a replica.
    with SilentListener() as dead:
        client = make_app(env={
            "FOOBAR_DB_PRIMARY": dead.address,
            "FOOBAR_DB_REPLICAS": f"{lab.primary.address},{lab.replica.address}",
        }).test_client()
        client.get(LISTING)  # the first look (waits for the dead node's first check)
        for _ in range(5):
            took, post = timed(lambda: client.post("/messages", json={"author": "h",
                                                                       "body": unique()}))
            assert (post.status_code, post.headers["X-DB"]) == (201, lab.primary.address)
            took_read, listing = timed(lambda: client.get(LISTING))
            assert listing.headers["X-DB"] == lab.replica.address
            assert took < STUCK and took_read < STUCK


def test_reads_carry_on_while_a_cluster_repoints_the_replica(make_app, lab):
    """The primary is gone and a failover cluster's agent resets the replica's replication
    (STOP SLAVE, RESET SLAVE ALL) before pointing it at the node it promotes: the replica's
    data is still the newest there is, and reads carry on from it."""
    client = make_app().test_client()
    kept = unique()
    assert client.post("/messages", json={"author": "rp", "body": kept}).status_code == 201
    lab.wait_replica_caught_up()
    try:
        with stopped(lab.primary):
            lab.replica.sql("STOP SLAVE", "RESET SLAVE ALL")
            wait_for(lambda: replication(client)["reason"] == "not a replica", 10,
                     "the app to see the replica without replication")
            for _ in range(20):
                page = client.get("/")
                assert (page.status_code, page.headers["X-DB-Role"]) == (200, "replica")
                assert kept in page.text
    finally:
        lab.replica.sql(lab._change_master(lab.primary), "START SLAVE")
        lab.wait_replica_caught_up()


def test_a_replica_stopped_on_an_error_serves_no_reads_even_without_a_primary():
    """Its data may be far behind: a SQL thread stopped on an error never serves."""
    from foobar.db.health import NodeStatus, status_from_rows

    broken = status_from_rows([{"Slave_IO_Running": "No", "Slave_SQL_Running": "No",
                                "Seconds_Behind_Master": None, "Last_SQL_Errno": 1062}],
                              1.0, 0.0)
    stopped_cleanly = status_from_rows([{"Slave_IO_Running": "No", "Slave_SQL_Running": "No",
                                         "Seconds_Behind_Master": None, "Last_SQL_Errno": 0}],
                                       1.0, 0.0)
    assert not NodeStatus(True, True, replication=broken).serves_stale_reads
    assert NodeStatus(True, True, replication=stopped_cleanly).serves_stale_reads
    assert NodeStatus(True, True, replication=status_from_rows([], 1.0, 0.0)).serves_stale_reads
