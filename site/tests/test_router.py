"""Routing decisions, checked against stand-in nodes (the real thing is in test_*_db.py)."""

from __future__ import annotations

import pymysql
import pytest

from conftest import unused_port
from foobar.db.health import HealthCache, check_node, status_from_rows
from foobar.db.nodes import (
    PRIMARY,
    REPLICA,
    ConnectSettings,
    Node,
    NodeAddress,
    NodeUnavailable,
)
from foobar.db.router import (
    BACKOFF_FIRST,
    BACKOFF_MAX,
    NoPrimary,
    Router,
    RouterEvents,
    limit_retries,
)


def slave_status(io="Yes", sql="Yes", lag=0):
    return [{"Slave_IO_Running": io, "Slave_SQL_Running": sql, "Seconds_Behind_Master": lag}]


class FakeNode:
    """A stand-in server; `role` is what it says it is (PRIMARY = read_only 0)."""

    def __init__(self, name, role=REPLICA, *, rows=None, gtid_wait=0, down=False):
        self.name = name
        self.read_only = role == REPLICA
        self.rows = slave_status() if rows is None else rows
        self.gtid_wait = gtid_wait
        self.down = down
        self.fail_reads = False
        self.read_failures = 0  # this many reads fail (connection reset), then they work
        self.lose_connection_mid_write = False
        self.statements: list[str] = []
        self.transactions = 0
        self.committed = 0
        self.read_timeouts: list[float | None] = []

    def run(self, work, *, transaction=False, read_timeout=None):
        self.read_timeouts.append(read_timeout)
        if self.down:  # like Node.run when it cannot connect: nothing was sent
            raise NodeUnavailable(self.name, ConnectionRefusedError("refused"), not_applied=True)
        self.transactions += transaction
        try:
            result = work(FakeCursor(self, transaction))
        except pymysql.err.OperationalError as exc:  # as Node.run classifies them
            raise NodeUnavailable.from_error(self.name, exc, work_sent=True) from exc
        self.committed += transaction
        return result


class FakeCursor:
    def __init__(self, node, transaction=False):
        self.node = node
        self.transaction = transaction
        self.result: list[dict] = []

    def execute(self, sql, args=None):
        node = self.node
        node.statements.append(sql)
        if "@@global.read_only" in sql:
            self.result = [{"read_only": int(node.read_only), "gtid_binlog_pos": "0-1-7"}]
        elif sql == "SHOW SLAVE STATUS":
            self.result = node.rows
        elif "MASTER_GTID_WAIT" in sql:
            self.result = [{"waited": node.gtid_wait}]
        elif "@@last_gtid" in sql:
            self.result = [{"gtid": "0-1-7"}]
        elif self.transaction and node.read_only:
            raise pymysql.err.OperationalError(1290, "running with the --read-only option")
        elif self.transaction and node.lose_connection_mid_write:
            raise pymysql.err.OperationalError(2013, "Lost connection to server during query")
        elif node.fail_reads or node.read_failures:
            node.read_failures = max(node.read_failures - 1, 0)
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

    def retry(self, kind, reason):
        self.events.append(("retry", kind, reason))

    def multiple_writable(self, nodes):
        self.events.append(("multiple_writable", tuple(nodes)))


class FakeTime:
    """clock/sleep for the router: sleeping advances the clock and may run a callback."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.on_sleep = None

    def clock(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds
        if self.on_sleep:
            self.on_sleep(self.now)


def who(cursor):
    cursor.execute("SELECT who")
    return cursor.fetchone()["node"]


def make_router(*replicas, **kwargs):
    primary = kwargs.pop("primary", None) or FakeNode("db1", PRIMARY)
    events = Recorder()
    return Router(primary, list(replicas), events=events, **kwargs), events


def work_statements(node):
    """What a node ran besides the router's role/health checks."""
    checks = ("@@global.read_only", "SHOW SLAVE STATUS")
    return [s for s in node.statements if not any(c in s for c in checks)]


def test_writes_go_to_the_primary_in_a_transaction_and_return_its_gtid():
    router, events = make_router(FakeNode("db2"))
    written = router.write(who)
    assert (written.value, written.role, written.gtid) == ("db1", PRIMARY, "0-1-7")
    assert router.configured_primary.transactions == 1
    assert work_statements(router.nodes[1]) == []
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
    replica = FakeNode("db2", down=True)
    router, _ = make_router(replica)
    assert router.read(who).role == PRIMARY
    status = router.view().status(replica)
    assert not status.reachable and status.role is None and "check failed" in status.error


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


def test_primary_read_is_retried_at_once():
    primary = FakeNode("db1", PRIMARY)
    primary.read_failures = 1
    fake = FakeTime()
    router, events = make_router(primary=primary, clock=fake.clock, sleep=fake.sleep)
    assert router.read(who).value == "db1"
    assert fake.sleeps == []  # first retry without a pause, on a fresh connection
    assert ("retry", "read", "unavailable") in events.events


def test_primary_down_for_writes_fails_at_once():
    # Unreachable is not read-only: no switchover is under way, so there is nothing to
    # wait for within the retry budget (a failover takes longer); refuse at once.
    fake = FakeTime()
    router, _ = make_router(
        primary=FakeNode("db1", PRIMARY, down=True), clock=fake.clock, sleep=fake.sleep
    )
    with pytest.raises(NoPrimary):
        router.write(who)
    assert fake.sleeps == []
    assert fake.now == 1000.0


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
        return check_node(node, 1.0, clock=lambda: now[0])

    replica = FakeNode("db2")
    cache = HealthCache(check, interval=1.0, clock=lambda: now[0])
    router, _ = make_router(replica, health=cache)
    for _ in range(5):
        router.read(who)
    assert checks == ["db1", "db2"]  # one round over every node
    replica.rows = slave_status(sql="No", lag=None)
    now[0] += 0.5
    assert router.read(who).value == "db2"  # still the cached answer
    now[0] += 0.6
    assert router.read(who).value == "db1"
    assert checks == ["db1", "db2", "db1", "db2"]


def test_status_from_rows_explains_itself():
    assert status_from_rows(slave_status(), 1.0, 0).healthy
    assert status_from_rows(slave_status(lag=3), 1.0, 0).reason == "lag 3s > 1s"
    assert status_from_rows(slave_status(sql="No"), 1.0, 0).reason == "SQL thread not running"
    assert status_from_rows([], 1.0, 0).reason == "not a replica"


# -- roles come from the servers -------------------------------------------------------


def test_a_configured_replica_that_is_writable_is_the_primary():
    old = FakeNode("db1", REPLICA)  # configured primary, now read-only and replicating
    new = FakeNode("db2", PRIMARY)  # configured replica, promoted
    router, events = make_router(new, primary=old)
    view = router.view()
    assert (view.primary, view.replicas) == (new, (old,))
    written = router.write(who)
    assert (written.value, written.node, written.role) == ("db2", new, PRIMARY)
    assert old.transactions == 0
    read = router.read(who)
    assert (read.value, read.role) == ("db1", REPLICA)  # the former primary serves reads
    assert ("query", REPLICA, "read") in events.events


def test_a_writable_node_is_never_a_read_replica():
    router, _ = make_router(FakeNode("db2", PRIMARY), FakeNode("db3"))
    assert router.view().replicas == (router.nodes[2],)
    assert {router.read(who).value for _ in range(4)} == {"db3"}


def test_several_writable_prefers_the_configured_primary_and_counts_it_once_per_round():
    now = [10.0]
    router, events = make_router(FakeNode("db2", PRIMARY), clock=lambda: now[0])
    for _ in range(3):
        assert router.write(who).value == "db1"
    assert events.events.count(("multiple_writable", ("db1", "db2"))) == 1
    now[0] += 1.5  # next round: counted again, it is still going on
    router.write(who)
    assert events.events.count(("multiple_writable", ("db1", "db2"))) == 2


def test_several_writable_without_the_configured_primary_takes_config_order():
    router, events = make_router(
        FakeNode("db2", PRIMARY), FakeNode("db3", PRIMARY), primary=FakeNode("db1", REPLICA)
    )
    assert router.write(who).value == "db2"
    assert ("multiple_writable", ("db2", "db3")) in events.events


def test_the_same_address_twice_is_one_node():
    router, _ = make_router(FakeNode("db1", PRIMARY), FakeNode("db2"))
    assert [n.name for n in router.nodes] == ["db1", "db2"]


# -- writes: retried only when they certainly did not apply -----------------------------


def test_write_refused_as_read_only_is_retried_on_the_new_primary_at_once():
    old, new = FakeNode("db1", PRIMARY), FakeNode("db2")
    fake = FakeTime()
    router, events = make_router(new, primary=old, clock=fake.clock, sleep=fake.sleep)
    assert router.view().primary is old  # cached: the app has not noticed anything yet
    old.read_only, new.read_only = True, False  # the switchover happens
    written = router.write(who)
    assert (written.value, written.role) == ("db2", PRIMARY)
    assert (old.transactions, old.committed, new.committed) == (1, 0, 1)
    assert fake.sleeps == []  # the refused write made the router look again right away
    assert ("retry", "write", "read_only") in events.events


def test_write_that_could_not_connect_is_retried():
    old, new = FakeNode("db1", PRIMARY), FakeNode("db2")
    fake = FakeTime()
    router, events = make_router(new, primary=old, clock=fake.clock, sleep=fake.sleep)
    router.view()
    old.down, new.read_only = True, False
    assert router.write(who).value == "db2"
    assert ("retry", "write", "unavailable") in events.events


def test_write_lost_mid_statement_is_not_retried():
    primary = FakeNode("db1", PRIMARY)
    primary.lose_connection_mid_write = True
    fake = FakeTime()
    router, events = make_router(FakeNode("db2"), primary=primary, clock=fake.clock,
                                 sleep=fake.sleep)
    with pytest.raises(NodeUnavailable) as caught:
        router.write(who)
    assert caught.value.not_applied is False
    assert primary.transactions == 1  # tried once: it may have committed
    assert fake.sleeps == [] and not any(e[0] == "retry" for e in events.events)


def test_no_writable_node_waits_with_backoff_then_gives_up():
    primary, replica = FakeNode("db1", PRIMARY), FakeNode("db2")
    fake = FakeTime()
    router, events = make_router(replica, primary=primary, clock=fake.clock, sleep=fake.sleep,
                                 write_retry_seconds=1.0)
    router.view()
    primary.read_only = True  # switchover: old primary stopped, new one not promoted yet
    started = fake.now
    with pytest.raises(NoPrimary) as caught:
        router.write(who)
    assert fake.now - started == pytest.approx(1.0)
    assert fake.sleeps[0] == BACKOFF_FIRST and set(fake.sleeps[1:-1]) == {BACKOFF_MAX}
    assert primary.committed == replica.committed == replica.transactions == 0
    assert "no database node is writable" in str(caught.value)
    assert ("retry", "write", "no_primary") in events.events


def test_no_writable_node_then_a_promotion_within_the_budget():
    primary, replica = FakeNode("db1", PRIMARY), FakeNode("db2")
    fake = FakeTime()
    router, _ = make_router(replica, primary=primary, clock=fake.clock, sleep=fake.sleep)
    router.view()
    primary.read_only = True
    started = fake.now

    def promote(now):
        if now - started >= 0.5:
            replica.read_only = False

    fake.on_sleep = promote
    written = router.write(who)
    assert (written.value, written.role) == ("db2", PRIMARY)
    assert 0.5 <= fake.now - started <= 0.5 + BACKOFF_MAX + 1e-9


@pytest.mark.parametrize("limit, waited", [(0.3, 0.3), (9.0, 1.0), (None, 1.0)])
def test_a_request_s_own_limit_shortens_the_wait_for_a_primary(limit, waited):
    """A request the proxies may replay waits at most its own limit (never longer than the
    router's budget); the limit holds for this thread until set again."""
    # no read-only node may serve reads (SQL threads stopped on an error): a read needs the
    # primary too
    stopped_on_error = [{**slave_status(sql="No")[0], "Last_SQL_Errno": 1062}]
    primary, replica = FakeNode("db1", PRIMARY), FakeNode("db2", rows=stopped_on_error)
    fake = FakeTime()
    router, _ = make_router(replica, primary=primary, clock=fake.clock, sleep=fake.sleep,
                            write_retry_seconds=1.0)
    router.view()
    primary.read_only, primary.rows = True, stopped_on_error
    limit_retries(limit)
    try:
        for work in (router.write, router.read):
            started = fake.now
            with pytest.raises(NoPrimary) as caught:
                work(who)
            assert caught.value.not_applied
            assert fake.now - started == pytest.approx(waited)
    finally:
        limit_retries(None)


def test_zero_budget_means_no_retry():
    primary = FakeNode("db1", PRIMARY)
    router, events = make_router(primary=primary, write_retry_seconds=0)
    router.view()
    primary.read_only = True
    with pytest.raises(NodeUnavailable):
        router.write(who)
    assert primary.transactions == 1 and not any(e[0] == "retry" for e in events.events)


def test_mid_switchover_reads_go_to_a_read_only_node_without_waiting():
    """No node writable, every node answering (a switchover): nothing newer can be written
    anywhere, so a read-only node serves the read at once, the demoted primary or a replica
    unfit by lag; a read waiting for the new primary would hold an app thread."""
    primary, replica = FakeNode("db1", PRIMARY), FakeNode("db2", rows=slave_status(lag=9))
    fake = FakeTime()
    router, events = make_router(replica, primary=primary, clock=fake.clock, sleep=fake.sleep)
    primary.read_only, primary.rows = True, []  # demoted, not replicating (yet)
    served = {router.read(who).value for _ in range(4)}
    assert served == {"db1", "db2"} and fake.sleeps == []
    assert primary.transactions == replica.transactions == 0
    assert not any(e[0] == "retry" for e in events.events)


def test_reads_wait_for_a_primary_when_no_read_only_node_can_serve():
    stopped_on_error = [{**slave_status(sql="No")[0], "Last_SQL_Errno": 1062}]
    primary, replica = FakeNode("db1", PRIMARY), FakeNode("db2", rows=stopped_on_error)
    fake = FakeTime()
    router, _ = make_router(replica, primary=primary, clock=fake.clock, sleep=fake.sleep)
    primary.read_only, primary.rows = True, stopped_on_error
    fake.on_sleep = lambda now: setattr(primary, "read_only", False)
    routed = router.read(who)
    assert (routed.value, routed.role) == ("db1", PRIMARY)


def test_forced_refresh_is_a_new_round_shared_by_callers_after_the_same_failure():
    primary = FakeNode("db1", PRIMARY)
    fake = FakeTime()
    router, _ = make_router(primary=primary, clock=fake.clock, sleep=fake.sleep)
    first = router.view()
    failed_at = fake.now
    fake.now += 0.001
    forced = router.view(newer_than=failed_at)
    assert forced.snapshot.round == first.snapshot.round + 1
    assert router.view(newer_than=failed_at) is forced  # another thread, same failure
    assert router.view() is forced


# -- which failures mean "not applied" ---------------------------------------------------


@pytest.mark.parametrize(
    ("error", "work_sent", "not_applied"),
    [
        (pymysql.err.OperationalError(1290, "--read-only"), True, True),
        (pymysql.err.OperationalError(2013, "Lost connection during query"), True, False),
        (pymysql.err.OperationalError(2006, "server has gone away"), True, False),
        (pymysql.err.OperationalError(2013, "Lost connection during query"), False, True),
        (ConnectionResetError(), True, False),
    ],
)
def test_not_applied_classification(error, work_sent, not_applied):
    exc = NodeUnavailable.from_error("db1", error, work_sent=work_sent)
    assert exc.not_applied is not_applied
    assert exc.read_only is (isinstance(error, pymysql.err.MySQLError) and error.args[0] == 1290)


def test_a_refused_connection_means_nothing_was_applied():
    node = Node(NodeAddress("127.0.0.1", unused_port()), ConnectSettings("db", "u", "pw"))
    with pytest.raises(NodeUnavailable) as caught:
        node.run(who, transaction=True)
    assert caught.value.not_applied and not caught.value.read_only


def test_a_replica_read_has_the_short_replica_timeout_and_a_gtid_wait_on_top():
    replica = FakeNode("db2", gtid_wait=0)
    router, _ = make_router(replica, replica_read_timeout=0.4, gtid_wait_timeout=0.5)
    router.view()  # the health checks (None: the node's own timeouts)
    replica.read_timeouts.clear()
    router.read(who)
    router.read(who, min_gtid="0-1-7")
    assert replica.read_timeouts == [0.4, 0.9, 0.4]


def test_a_read_when_the_primary_dies_between_checks_is_served_by_its_replica():
    """The replica's IO thread already lost the primary (so it is not fit), the last check
    still saw db1 writable: the read finds db1 dead, and db2, which holds everything db1
    acknowledged, serves it instead of the client getting a 503."""
    clock = FakeTime()
    replica = FakeNode("db2", rows=slave_status(io="Connecting"))
    router, events = make_router(replica, clock=clock.clock, sleep=clock.sleep)
    assert router.view().primary is router.configured_primary
    router.configured_primary.down = True
    routed = router.read(who)
    assert (routed.value, routed.role) == ("db2", REPLICA)
    assert ("fallback", "primary_gone") in events.events


def test_a_read_with_the_primary_and_every_replica_gone_is_refused():
    """No primary, and the one replica's SQL thread stopped on an error (its data may be far
    behind; a replica stopped cleanly, as a failover cluster repoints it, still serves)."""
    clock = FakeTime()
    replica = FakeNode("db2", rows=[{**slave_status(io="Connecting", sql="No")[0],
                                     "Last_SQL_Errno": 1062}])
    router, _ = make_router(replica, clock=clock.clock, sleep=clock.sleep)
    router.view()
    router.configured_primary.down = True
    with pytest.raises(NoPrimary):
        router.read(who)


def test_a_replica_that_lost_its_primary_is_still_waited_on_for_the_clients_write():
    """It applies what it received (with semi-sync, every acknowledged write), and the
    client's write may come from a primary that is back while this process still thinks it
    gone: the read waits the usual GTID timeout there instead of failing at once."""
    clock = FakeTime()
    replica = FakeNode("db2", rows=slave_status(io="Connecting"), gtid_wait=0)
    router, events = make_router(replica, clock=clock.clock, sleep=clock.sleep,
                                 gtid_wait_timeout=0.5, replica_read_timeout=0.5)
    router.configured_primary.down = True
    assert router.view().primary_gone
    replica.read_timeouts.clear()
    routed = router.read(who, min_gtid="0-1-9")
    assert (routed.value, routed.role) == ("db2", REPLICA)
    assert replica.read_timeouts[0] == 1.0  # MASTER_GTID_WAIT(.., 0.5) + the read's own
    assert ("gtid_wait", "caught_up") in events.events
