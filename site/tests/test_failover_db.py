"""Replication trouble with real servers: a stalled replica and a dead one.

Nothing here may produce a failed request: the router has to notice and use the primary.
"""

from __future__ import annotations

import time
import uuid

from prometheus_client import REGISTRY

LISTING = "/api/messages?limit=5"


def unique() -> str:
    return f"fo-{uuid.uuid4().hex[:12]}"


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def poll(get, until, timeout: float = 10.0):
    """Repeat a request until `until(response)`; every response on the way must be a 200."""
    deadline = time.monotonic() + timeout
    while True:
        response = get()
        assert response.status_code == 200
        if until(response):
            return response
        assert time.monotonic() < deadline, "condition never met"
        time.sleep(0.05)


def test_stalled_replica_still_shows_a_client_its_own_writes(make_app, lab):
    # A long check interval makes "the cache still says healthy" last long enough to test.
    app = make_app(replica_check_interval=2.0)
    writer, visitor = app.test_client(), app.test_client()
    assert visitor.get(LISTING).headers["X-DB-Role"] == "replica"
    lab.replica.sql("STOP SLAVE SQL_THREAD")
    try:
        timeouts = sample("foobar_read_your_writes_timeouts_total")
        body = unique()
        assert writer.post("/messages", json={"author": "ivy", "body": body}).status_code == 201

        # The writer still sees its message: the GTID wait times out, the primary answers.
        mine = writer.get(LISTING)
        assert mine.status_code == 200
        assert body in mine.text
        assert mine.headers["X-DB-Role"] == "primary"
        assert sample("foobar_read_your_writes_timeouts_total") == timeouts + 1

        # A visitor without the cookie gets the stale replica until the next health check...
        stale = visitor.get(LISTING)
        assert stale.headers["X-DB-Role"] == "replica"
        assert body not in stale.text
        # ...which finds the SQL thread stopped and moves reads to the primary.
        fresh = poll(lambda: visitor.get(LISTING), lambda r: r.headers["X-DB-Role"] == "primary")
        assert body in fresh.text

        ready = writer.get("/readyz").get_json()
        replica = next(n for n in ready["nodes"] if n["role"] == "replica")
        assert replica["ok"] is True  # reachable ...
        assert replica["replication"]["reason"] == "SQL thread not running"  # ... but unfit
    finally:
        lab.replica.sql("START SLAVE SQL_THREAD")
        lab.wait_replica_caught_up()
    back = poll(lambda: visitor.get(LISTING), lambda r: r.headers["X-DB-Role"] == "replica")
    assert body in back.text


def test_dead_replica_means_reads_from_the_primary_without_errors(make_app, lab):
    app = make_app()
    client, visitor = app.test_client(), app.test_client()
    assert client.get(LISTING).headers["X-DB-Role"] == "replica"
    fallbacks = sample("foobar_replica_fallbacks_total", reason="replica_error")
    lab.replica.stop()
    try:
        # The cache still says healthy: the first read fails on the replica, then retries.
        first = client.get(LISTING)
        assert first.status_code == 200
        assert first.headers["X-DB-Role"] == "primary"
        assert sample("foobar_replica_fallbacks_total", reason="replica_error") == fallbacks + 1
        body = unique()
        assert client.post("/messages", json={"author": "jo", "body": body}).status_code == 201
        for path in (LISTING, "/"):
            for who in (client, visitor):
                response = who.get(path)
                assert response.status_code == 200
                assert response.headers["X-DB-Role"] == "primary"
                assert body in response.text
        ready = client.get("/readyz")
        assert ready.status_code == 200
        nodes = {n["configured_role"]: n for n in ready.get_json()["nodes"]}
        assert nodes["primary"]["ok"] and not nodes["replica"]["ok"]
        assert (nodes["primary"]["role"], nodes["replica"]["role"]) == ("primary", None)
        # Across later health checks the replica stays known-down: still no errors.
        until = time.monotonic() + 1.5
        while time.monotonic() < until:
            response = visitor.get(LISTING)
            assert (response.status_code, response.headers["X-DB-Role"]) == (200, "primary")
    finally:
        lab.replica.start()
        lab.wait_replica_caught_up()
    back = poll(lambda: visitor.get(LISTING), lambda r: r.headers["X-DB-Role"] == "replica")
    assert body in back.text
