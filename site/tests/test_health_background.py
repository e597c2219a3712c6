"""Health checks in the background, with silent stand-in nodes: nobody waits on a dead node.

Plus the connection-level bounds that make a silent server cost a bounded time at all.
"""

from __future__ import annotations

import threading
import time

import pytest

from faults import FullBacklog, SilentListener
from foobar.db.health import HealthCache, NodeStatus, check_node
from foobar.db.marks import DownBoard
from foobar.db.nodes import (
    PRIMARY,
    TCP_CONNECT_TIMEOUT,
    ConnectSettings,
    Node,
    NodeAddress,
    NodeUnavailable,
    connect,
)
from foobar.db.router import NoPrimary, Router, limit_retries
from test_router import FakeNode, Recorder, who


class SilentNode(FakeNode):
    """A stand-in that can go silent: then every call hangs `timeout` seconds and fails
    the way a socket timeout does (unreachable)."""

    def __init__(self, name, role, *, timeout=0.3):
        super().__init__(name, role)
        self.timeout = timeout
        self.silent = threading.Event()
        self.calls_while_silent = 0

    def run(self, work, *, transaction=False, read_timeout=None):
        if self.silent.is_set():
            self.calls_while_silent += 1
            time.sleep(self.timeout)
            raise NodeUnavailable(self.name, TimeoutError("timed out"), not_applied=False)
        return super().run(work, transaction=transaction)


def background_router(*replicas, primary=None, interval=0.2):
    primary = primary or FakeNode("db1", PRIMARY)
    events = Recorder()
    router = Router(primary, list(replicas), events=events, check_interval=interval,
                    background_checks=True)
    return router, events


def timed(call):
    started = time.monotonic()
    result = call()
    return time.monotonic() - started, result


def test_checks_run_in_the_background_and_reads_never_wait_on_a_silent_replica():
    replica = SilentNode("db2", "replica")
    router, _ = background_router(replica)
    try:
        assert router.read(who).value == "db2"
        replica.silent.set()
        # The read in flight when it went silent pays the timeout once...
        took, first = timed(lambda: router.read(who))
        assert first.value == "db1" and took >= replica.timeout
        calls = replica.calls_while_silent
        # ...then it is marked down: reads skip it, over several check intervals, while
        # its checker keeps asking it in the background.
        until = time.monotonic() + 1.0
        while time.monotonic() < until:
            took, routed = timed(lambda: router.read(who))
            assert routed.value == "db1" and took < replica.timeout / 2
        assert replica.calls_while_silent > calls  # the checker kept trying
        # It answers again: the next check brings it back.
        replica.silent.clear()
        deadline = time.monotonic() + 2
        while router.read(who).value != "db2":
            assert time.monotonic() < deadline, "the replica never came back"
            time.sleep(0.02)
    finally:
        router.close()


def test_a_replica_that_goes_silent_between_requests_costs_no_request_anything():
    replica = SilentNode("db2", "replica", timeout=0.2)
    router, _ = background_router(replica, interval=0.1)
    try:
        router.read(who)
        replica.silent.set()
        time.sleep(0.5)  # a few check intervals: its checker finds out first
        for _ in range(20):
            took, routed = timed(lambda: router.read(who))
            assert routed.value == "db1" and took < 0.1
    finally:
        router.close()


def test_a_refreshed_view_does_not_wait_for_a_node_known_to_be_down():
    primary = FakeNode("db1", PRIMARY)
    silent = SilentNode("db3", "replica", timeout=1.0)
    router, events = background_router(FakeNode("db2"), silent, primary=primary)
    try:
        router.view()
        silent.silent.set()
        router.health.mark_down(silent, "test: found dead")
        primary.read_only = True  # a switchover starts: the write is refused (1290)...
        threading.Timer(0.2, lambda: setattr(router.nodes[1], "read_only", False)).start()
        # ...and is retried on db2 once promoted, never waiting on db3's 1 s silence.
        took, written = timed(lambda: router.write(who))
        assert written.value == "db2" and took < 0.8
        assert ("retry", "write", "read_only") in events.events
    finally:
        router.close()


def test_a_primary_that_times_out_is_marked_down_and_the_next_writes_fail_at_once():
    primary = SilentNode("db1", PRIMARY, timeout=0.3)
    router, _ = background_router(FakeNode("db2"), primary=primary)
    try:
        router.write(who)
        primary.silent.set()
        took, _ = timed(lambda: pytest.raises(NodeUnavailable, router.write, who))
        assert took < 0.3 + 0.2  # its own timeout, no waiting for the retry budget
        for _ in range(5):
            took, _ = timed(lambda: pytest.raises(NoPrimary, router.write, who))
            assert took < 0.05
        assert router.read(who).value == "db2"  # reads carry on from the replica
    finally:
        router.close()


def test_a_primary_one_process_found_silent_costs_the_others_no_timeout(tmp_path):
    """Two workers of one app server (two routers, one board): once the first paid the
    silent primary's timeout, the second refuses writes at once, without its own; both see
    the primary again as soon as it answers."""
    board_dir = tmp_path / "health"
    routers = []
    primaries = [SilentNode("db1", PRIMARY, timeout=0.3) for _ in range(2)]
    for primary in primaries:
        routers.append(Router(primary, [FakeNode("db2")], check_interval=5.0,
                              background_checks=True, down_board=DownBoard(board_dir)))
    first, second = routers
    try:
        for router in routers:
            router.write(who)
        for primary in primaries:
            primary.silent.set()
        took, _ = timed(lambda: pytest.raises(NodeUnavailable, first.write, who))
        assert took >= 0.3
        took, _ = timed(lambda: pytest.raises(NoPrimary, second.write, who))
        assert took < 0.05
        assert primaries[1].calls_while_silent <= 1  # its checker, woken, sees for itself
        assert second.read(who).value == "db2"
        for primary in primaries:
            primary.silent.clear()
        deadline = time.monotonic() + 3
        while any(r.view(newer_than=time.monotonic()).primary is None for r in routers):
            assert time.monotonic() < deadline, "a mark outlived the node's answer"
            time.sleep(0.05)
        assert [r.write(who).value for r in routers] == ["db1", "db1"]
    finally:
        for router in routers:
            router.close()


def test_a_mark_older_than_the_last_answer_is_ignored(tmp_path):
    """A process that heard from the node after another found it silent keeps using it
    (the other's mark is old news: the node answered since)."""
    board = DownBoard(tmp_path)
    primary = FakeNode("db1", PRIMARY)
    board.post("db1", time.monotonic() - 10)
    router = Router(primary, [FakeNode("db2")], check_interval=5.0, background_checks=True,
                    down_board=board)
    try:
        assert router.write(who).value == "db1"
    finally:
        router.close()


def test_a_board_that_cannot_be_written_costs_only_the_sharing(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    board = DownBoard(blocked / "health")
    board.post("db1", 1.0)  # no exception
    assert board.marked_at("db1") is None


def test_a_cache_nobody_holds_stops_its_checkers():
    node = FakeNode("db1", PRIMARY)
    cache = HealthCache(lambda n: check_node(n, 1.0), interval=0.05, background=True)
    cache.get([node])
    threads = [t for t in threading.enumerate() if t.name == "foobar-health db1"]
    assert threads
    del cache
    for thread in threads:
        thread.join(timeout=2)
        assert not thread.is_alive()


def test_a_check_that_raises_something_unexpected_marks_the_node_down_and_keeps_checking():
    calls = []

    def check(node):
        calls.append(node.name)
        if len(calls) == 1:
            raise KeyError("surprise")
        return NodeStatus(reachable=True, read_only=False)

    node = FakeNode("db1", PRIMARY)
    cache = HealthCache(check, interval=0.05, background=True)
    try:
        first = cache.get([node])
        assert first.get(node).reachable is False and "surprise" in first.get(node).error
        deadline = time.monotonic() + 2
        while not cache.snapshot().get(node).reachable:
            assert time.monotonic() < deadline
            time.sleep(0.01)
    finally:
        cache.close()


# -- what a silent server costs a connection ---------------------------------------------


@pytest.mark.parametrize("dead_kind", [SilentListener, FullBacklog])
def test_connecting_to_a_silent_port_costs_the_connect_timeout_once(dead_kind):
    settings = ConnectSettings("db", "u", "pw", connect_timeout=0.3, read_timeout=5.0)
    with dead_kind() as dead:
        took, caught = timed(
            lambda: pytest.raises(NodeUnavailable, connect, NodeAddress("127.0.0.1", dead.port),
                                  settings)
        )
    # A listener that never greets would otherwise cost the 5 s read timeout.
    assert 0.3 <= took < 1.0
    assert caught.value.unreachable and caught.value.not_applied


def test_a_machine_that_answers_no_syn_costs_only_the_tcp_connect_timeout():
    """A powered-off or cut-off node: its kernel answers nothing. That is known after
    TCP_CONNECT_TIMEOUT, not the handshake's whole connect timeout."""
    settings = ConnectSettings("db", "u", "pw", connect_timeout=1.0, read_timeout=5.0)
    with FullBacklog() as dead:
        took, caught = timed(
            lambda: pytest.raises(NodeUnavailable, connect, NodeAddress("127.0.0.1", dead.port),
                                  settings)
        )
    assert TCP_CONNECT_TIMEOUT <= took < TCP_CONNECT_TIMEOUT + 0.2
    assert caught.value.unreachable and caught.value.not_applied


def test_a_node_that_cannot_be_connected_to_is_unreachable():
    with SilentListener() as dead:
        node = Node(NodeAddress("127.0.0.1", dead.port),
                    ConnectSettings("db", "u", "pw", connect_timeout=0.2))
        with pytest.raises(NodeUnavailable) as caught:
            node.run(who)
    assert caught.value.unreachable and caught.value.not_applied


def test_checks_use_short_timeouts_of_their_own():
    settings = ConnectSettings("db", "u", "pw")
    node = Node(NodeAddress("127.0.0.1", 1), settings)
    checker = node.for_checks()
    assert checker is node.for_checks() and checker is not node
    assert (checker.settings.connect_timeout, checker.settings.read_timeout) == (0.5, 0.5)
    assert (node.settings.connect_timeout, node.settings.read_timeout) == (1.0, 2.0)


def test_a_write_that_finds_the_primary_silent_is_refused_without_waiting_for_the_others():
    """The replica is slow to answer its checks (a cluster promoting it stops its
    replication first): the write that found the primary silent does not wait for them."""
    primary = SilentNode("db1", PRIMARY, timeout=0.3)
    replica = SilentNode("db2", "replica", timeout=0.3)
    router, _ = background_router(replica, primary=primary, interval=5.0)
    try:
        router.write(who)
        primary.silent.set()
        replica.silent.set()
        # a keyed write: one the router may retry after any failure
        took, _ = timed(lambda: pytest.raises(NodeUnavailable, router.write, who,
                                              idempotent=True))
        assert took < 0.3 + 0.15  # the primary's own timeout, not the replica's check too
    finally:
        router.close()


def test_a_worker_idle_through_a_switchover_knows_the_new_primary_is_gone_when_it_dies():
    """The checks saw db1 become the primary while this worker served nothing; db1 then
    goes silent. Its next keyed write is refused at once (the primary is gone), not held as
    if the switchover were still under way (every attempt held 1 s: the client gave up)."""
    old = FakeNode("db2", PRIMARY)
    new = SilentNode("db1", "replica", timeout=0.3)
    router, _ = background_router(new, primary=old, interval=0.05)
    try:
        assert router.write(who).value == "db2"
        old.read_only, new.read_only = True, False  # the switchover, seen by the checks only
        poll_until(lambda: router.health.snapshot().get(new).role == PRIMARY)
        new.silent.set()
        poll_until(lambda: not router.health.snapshot().get(new).reachable)
        limit_retries(1.0)
        try:
            took, _ = timed(lambda: pytest.raises(NoPrimary, router.write, who,
                                                  idempotent=True))
        finally:
            limit_retries(None)
        assert took < 0.1
    finally:
        router.close()


def poll_until(condition, timeout=3.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)
