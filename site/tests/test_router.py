"""Routing decisions, checked against stand-in nodes (the real thing is in test_*_db.py)."""

from __future__ import annotations

import pytest

from foobar.db.health import HealthCache, check_replica, status_from_rows
from foobar.db.nodes import PRIMARY, REPLICA, NodeUnavailable
from foobar.db.router import Router, RouterEvents


def slave_status(io="Yes", sql="Yes", lag=0):
    return [{"Slave_IO_Running": io, "Slave_SQL_Running": sql, "Seconds_Behind_Master": lag}]


class FakeNode:
    def __init__(self, name, role=REPLICA, *, rows=None, gtid_wait=0, down=False):
        self.name = name
        self.role = role
        self.rows = slave_status() if rows is None else rows
        self.gtid_wait = gtid_wait
        self.down = down
        self.fail_reads = False
        self.statements: list[str] = []
        self.transactions = 0

    def run(self, work, *, transaction=False):
        if self.down:
            raise NodeUnavailable(self.name, ConnectionRefusedError("refused"))
        self.transactions += transaction
        return work(FakeCursor(self))


class FakeCursor:
    def __init__(self, node):
        self.node = node
        self.result: list[dict] = []

    def execute(self, sql, args=None):
        node = self.node
        node.statements.append(sql)
        if sql == "SHOW SLAVE STATUS":
            self.result = node.rows
        elif "MASTER_GTID_WAIT" in sql:
            self.result = [{"waited": node.gtid_wait}]
        elif "@@last_gtid" in sql:
            self.result = [{"gtid": "0-1-7"}]
        elif node.fail_reads:
            raise NodeUnavailable(node.name, ConnectionResetError("reset mid-read"))
        else:
            self.result = [{"node": node.name}]

    def fetchone(self):
        return self.result[0] if self.result else None

    def fetchall(self):
        return list(self.result)


class Recorder(RouterEvents):
    def __init__(self):
        self.events = []

    def query(self, role, kind):
        self.events.append(("query", role, kind))

    def gtid_wait(self, outcome):
        self.events.append(("gtid_wait", outcome))

    def fallback(self, reason):
        self.events.append(("fallback", reason))


def who(cursor):
    cursor.execute("SELECT who")
    return cursor.fetchone()["node"]


def make_router(*replicas, **kwargs):
    primary = kwargs.pop("primary", None) or FakeNode("db1", PRIMARY)
    events = Recorder()
    return Router(primary, list(replicas), events=events, **kwargs), events


def test_writes_go_to_the_primary_in_a_transaction_and_return_its_gtid():
    router, events = make_router(FakeNode("db2"))
    written = router.write(who)
    assert (written.value, written.role, written.gtid) == ("db1", PRIMARY, "0-1-7")
    assert router.primary.transactions == 1
    assert router.replicas[0].statements == []
    assert events.events == [("query", PRIMARY, "write")]


def test_reads_without_replicas_use_the_primary_and_are_no_fallback():
    router, events = make_router()
    assert router.read(who).value == "db1"
    assert events.events == [("query", PRIMARY, "read")]


def test_reads_go_round_robin_over_healthy_replicas():
    router, _ = make_router(FakeNode("db2"), FakeNode("db3"))
    served = [router.read(who).value for _ in range(4)]
    assert sorted(served) == ["db2", "db2", "db3", "db3"]
    assert served[0] != served[1]


@pytest.mark.parametrize(
    "rows",
    [
        slave_status(lag=5),
        slave_status(sql="No", lag=None),
        slave_status(io="Connecting"),
        slave_status(lag=None),
        [],
    ],
)
def test_unfit_replicas_are_skipped(rows):
    router, events = make_router(FakeNode("db2", rows=rows), FakeNode("db3"), max_lag=1.0)
    assert {router.read(who).value for _ in range(4)} == {"db3"}
    only_bad, events = make_router(FakeNode("db2", rows=rows), max_lag=1.0)
    routed = only_bad.read(who)
    assert (routed.value, routed.role) == ("db1", PRIMARY)
    assert ("fallback", "no_healthy_replica") in events.events


def test_lag_equal_to_the_limit_is_accepted():
    router, _ = make_router(FakeNode("db2", rows=slave_status(lag=1)), max_lag=1.0)
    assert router.read(who).value == "db2"


def test_unreachable_replica_is_unhealthy():
    router, _ = make_router(FakeNode("db2", down=True))
    assert router.read(who).role == PRIMARY
    status = router.health.get(router.replicas[0])
    assert not status.healthy and "check failed" in status.reason


def test_replica_failing_mid_read_falls_back_and_is_benched():
    replica = FakeNode("db2")
    router, events = make_router(replica)
    assert router.read(who).value == "db2"
    replica.fail_reads = True
    routed = router.read(who)
    assert (routed.value, routed.role) == ("db1", PRIMARY)
    assert ("fallback", "replica_error") in events.events
    replica.fail_reads = False
    # Benched until its next health check, not tried again on the very next read.
    assert router.read(who).value == "db1"


def test_primary_read_is_retried_once():
    class Flaky(FakeNode):
        failures = 1

        def run(self, work, *, transaction=False):
            if self.failures:
                self.failures -= 1
                raise NodeUnavailable(self.name, BrokenPipeError())
            return super().run(work, transaction=transaction)

    router, _ = make_router(primary=Flaky("db1", PRIMARY))
    assert router.read(who).value == "db1"


def test_primary_down_for_writes_raises():
    router, _ = make_router(primary=FakeNode("db1", PRIMARY, down=True))
    with pytest.raises(NodeUnavailable):
        router.write(who)


def test_client_gtid_is_waited_for_on_the_replica():
    replica = FakeNode("db2", gtid_wait=0)
    router, events = make_router(replica)
    assert router.read(who, min_gtid="0-1-7").value == "db2"
    assert any("MASTER_GTID_WAIT" in s for s in replica.statements)
    assert ("gtid_wait", "caught_up") in events.events


@pytest.mark.parametrize("result", [-1, None])
def test_gtid_wait_timeout_or_null_reads_the_primary(result):
    router, events = make_router(FakeNode("db2", gtid_wait=result))
    routed = router.read(who, min_gtid="0-1-7")
    assert routed.role == PRIMARY
    assert ("gtid_wait", "timeout") in events.events
    assert ("fallback", "gtid_wait_timeout") in events.events


def test_no_gtid_no_wait():
    replica = FakeNode("db2")
    router, _ = make_router(replica)
    router.read(who)
    assert not any("MASTER_GTID_WAIT" in s for s in replica.statements)


def test_health_is_checked_once_per_interval():
    now = [100.0]
    checks = []

    def check(node):
        checks.append(node.name)
        return check_replica(node, 1.0, clock=lambda: now[0])

    replica = FakeNode("db2")
    cache = HealthCache(check, interval=1.0, clock=lambda: now[0])
    router, _ = make_router(replica, health=cache)
    for _ in range(5):
        router.read(who)
    assert checks == ["db2"]
    replica.rows = slave_status(sql="No", lag=None)
    now[0] += 0.5
    assert router.read(who).value == "db2"  # still the cached answer
    now[0] += 0.6
    assert router.read(who).value == "db1"
    assert checks == ["db2", "db2"]


def test_status_from_rows_explains_itself():
    assert status_from_rows(slave_status(), 1.0, 0).healthy
    assert status_from_rows(slave_status(lag=3), 1.0, 0).reason == "lag 3s > 1s"
    assert status_from_rows(slave_status(sql="No"), 1.0, 0).reason == "SQL thread not running"
    assert status_from_rows([], 1.0, 0).reason == "not a replica"
