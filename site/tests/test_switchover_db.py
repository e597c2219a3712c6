"""Planned switchovers with real servers, the app's configuration left as it was deployed.

The lab's `primary` is what FOOBAR_DB_PRIMARY names and its `replica` what
FOOBAR_DB_REPLICAS names, throughout: the app has to find out from the servers which one
is writable. Every test here puts the original arrangement back (the `restore` fixture),
so the other tests are unaffected.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from prometheus_client import REGISTRY

from foobar.db.gtid import COOKIE_NAME
from foobar.db.nodes import NodeUnavailable
from mariadb_lab import DB_NAME

LISTING = "/api/messages?limit=20"


def unique() -> str:
    return f"sw-{uuid.uuid4().hex[:12]}"


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def rows_with_body(server, body: str) -> int:
    return server.sql(
        f"SELECT COUNT(*) AS n FROM `{DB_NAME}`.messages WHERE body = %s", args=(body,)
    )[0]["n"]


def counts_by_body(server, bodies: list[str]) -> dict[str, int]:
    rows = server.sql(
        f"SELECT body, COUNT(*) AS n FROM `{DB_NAME}`.messages "
        f"WHERE body IN ({', '.join(['%s'] * len(bodies))}) GROUP BY body",
        args=bodies,
    )
    return {r["body"]: r["n"] for r in rows}


def post(client, body: str):
    return client.post("/messages", json={"author": "sw", "body": body})


def later(seconds: float, action) -> threading.Thread:
    """Run action() in the background after `seconds`."""

    def run():
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@pytest.fixture
def restore(lab):
    yield
    lab.restore()


def test_app_follows_a_switchover_without_a_redeploy(make_app, lab, restore):
    old, new = lab.primary, lab.replica
    app = make_app()
    # Another app machine that checked roles just before and caches them for a long time:
    # its first write after the switchover is refused (1290) and must be retried.
    stale = make_app("app2", replica_check_interval=60.0).test_client()
    writer, visitor = app.test_client(), app.test_client()

    before = unique()
    first = post(writer, before)
    assert (first.status_code, first.headers["X-DB"]) == (201, old.address)
    assert post(stale, unique()).headers["X-DB"] == old.address
    assert visitor.get(LISTING).headers["X-DB"] == new.address  # the replica serves reads
    refused = sample("foobar_db_primary_retries_total", kind="write", reason="read_only")

    lab.switchover(old, new)

    # Writes land on the new primary, including on the app that still thinks otherwise.
    for client in (stale, writer):
        body = unique()
        response = post(client, body)
        assert response.status_code == 201
        assert (response.headers["X-DB"], response.headers["X-DB-Role"]) == (
            new.address,
            "primary",
        )
        assert rows_with_body(new, body) == 1
    assert sample("foobar_db_primary_retries_total", kind="write", reason="read_only") > refused
    after = unique()
    assert post(writer, after).status_code == 201

    # The writer always sees both its writes (one from each primary) wherever it reads,
    # and reads move to the former primary once it replicates healthily.
    deadline = time.monotonic() + 10
    while True:
        mine = writer.get(LISTING)
        assert mine.status_code == 200
        assert before in mine.text and after in mine.text, mine.headers["X-DB"]
        if (mine.headers["X-DB"], mine.headers["X-DB-Role"]) == (old.address, "replica"):
            break
        assert time.monotonic() < deadline, "reads never moved to the former primary"
        time.sleep(0.05)
    # A visitor with no cookie reads there too (round-robin over one healthy replica).
    seen = visitor.get(LISTING)
    assert (seen.headers["X-DB"], seen.headers["X-DB-Role"]) == (old.address, "replica")

    # The cookie now holds a GTID from the new primary; it is waited for on the replica.
    position = app.extensions["foobar"].gtid_cookie.loads(writer.get_cookie(COOKIE_NAME).value)
    assert position.startswith("0-2-")  # server_id 2: written by the new primary

    ready = writer.get("/readyz").get_json()
    nodes = {n["node"]: n for n in ready["nodes"]}
    assert ready["primary"] == new.address
    assert nodes[old.address].items() >= {
        "configured_role": "primary",
        "role": "replica",
        "read_only": True,
        "routed_as": "replica",
    }.items()
    assert nodes[old.address]["replication"]["healthy"] is True
    assert nodes[new.address].items() >= {
        "configured_role": "replica",
        "role": "primary",
        "read_only": False,
        "routed_as": "primary",
    }.items()


def test_writes_during_a_switchover_all_succeed(make_app, lab, restore):
    old, new = lab.primary, lab.replica
    app = make_app()
    results: list[tuple[str, int, str | None, float]] = []
    stop = threading.Event()

    def keep_writing():
        client = app.test_client()
        while not stop.is_set():
            body = unique()
            started = time.monotonic()
            response = post(client, body)
            took = time.monotonic() - started
            results.append((body, response.status_code, response.headers.get("X-DB"), took))

    writers = [threading.Thread(target=keep_writing) for _ in range(2)]
    for thread in writers:
        thread.start()
    try:
        time.sleep(0.3)
        # Half a second with no node writable, as if the catch-up wait took that long.
        lab.switchover(old, new, pause=0.5)
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in writers:
            thread.join(timeout=30)

    assert len(results) > 10
    assert [r for r in results if r[1] != 201] == []
    landed = {r[2] for r in results}
    assert landed == {old.address, new.address}
    # The longest wait covers the read-only window, and stays well inside the budget.
    assert 0.4 < max(r[3] for r in results) < 4.0
    lab.wait_caught_up(new, old)
    bodies = [r[0] for r in results]
    for server in (new, old):  # every acknowledged write exists, once, on both nodes
        assert counts_by_body(server, bodies) == dict.fromkeys(bodies, 1)


def test_a_write_waits_while_no_node_is_writable(make_app, lab, restore):
    client = make_app().test_client()
    assert post(client, unique()).headers["X-DB"] == lab.primary.address  # roles cached
    lab.primary.sql("SET GLOBAL read_only = 1")  # the replica is read-only already
    flip = later(0.5, lambda: lab.primary.sql("SET GLOBAL read_only = 0"))
    body = unique()
    started = time.monotonic()
    response = post(client, body)
    took = time.monotonic() - started
    flip.join()
    assert response.status_code == 201
    assert (response.headers["X-DB"], response.headers["X-DB-Role"]) == (
        lab.primary.address,
        "primary",
    )
    assert 0.4 <= took < 3.0  # budget: 5 s
    assert rows_with_body(lab.primary, body) == 1


def test_no_writable_node_past_the_budget_is_a_clean_503(make_app, lab, restore):
    client = make_app(env={"FOOBAR_WRITE_RETRY_SECONDS": "0.5"}).test_client()
    assert post(client, unique()).status_code == 201
    lab.primary.sql("SET GLOBAL read_only = 1")
    body = unique()
    started = time.monotonic()
    response = post(client, body)
    took = time.monotonic() - started
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "1"
    assert response.get_json()["status"] == 503
    assert "X-DB" not in response.headers
    assert 0.5 <= took < 3.0
    assert rows_with_body(lab.primary, body) == 0
    assert rows_with_body(lab.replica, body) == 0
    # Reads carry on meanwhile: the replica is still healthy.
    assert client.get(LISTING).headers["X-DB-Role"] == "replica"


def test_two_writable_nodes_prefer_the_configured_primary_and_are_counted(make_app, lab, restore):
    counted = sample("foobar_db_multiple_writable_total")
    lab.replica.sql("SET GLOBAL read_only = 0")  # nothing may write there: still replicating
    client = make_app().test_client()
    response = post(client, unique())
    assert (response.status_code, response.headers["X-DB"]) == (201, lab.primary.address)
    assert sample("foobar_db_multiple_writable_total") > counted
    ready = client.get("/readyz").get_json()
    assert {n["role"] for n in ready["nodes"]} == {"primary"}
    assert ready["primary"] == lab.primary.address
    # A writable node is no read replica, however healthy its replication looks.
    assert client.get(LISTING).headers["X-DB"] == lab.primary.address


def test_a_read_only_refusal_is_known_not_applied(make_app, lab):
    router = make_app().extensions["foobar"].router
    replica = router.nodes[1]
    assert replica.name == lab.replica.address

    def insert(cursor):
        cursor.execute("INSERT INTO messages (author, body) VALUES ('sw', 'refused')")

    with pytest.raises(NodeUnavailable) as caught:
        replica.run(insert, transaction=True)
    assert caught.value.read_only and caught.value.not_applied


def test_a_commit_refused_as_read_only_is_retried_and_stored_once(make_app, lab, restore):
    router = make_app().extensions["foobar"].router
    body = unique()
    attempts = []

    def insert(cursor):
        attempts.append(1)
        cursor.execute("INSERT INTO messages (author, body) VALUES (%s, %s)", ("sw", body))
        if len(attempts) == 1:
            # Writes stop between this INSERT and its COMMIT: the server refuses the COMMIT
            # (1290) and rolls the transaction back. Writes resume a moment later.
            lab.primary.sql("SET GLOBAL read_only = 1")
            later(0.3, lambda: lab.primary.sql("SET GLOBAL read_only = 0"))

    written = router.write(insert)
    assert (written.node.name, written.role) == (lab.primary.address, "primary")
    assert len(attempts) >= 2
    assert rows_with_body(lab.primary, body) == 1


def test_a_write_lost_after_it_was_sent_is_not_retried(make_app, lab):
    router = make_app().extensions["foobar"].router
    body = unique()
    attempts = []

    def insert_then_hang(cursor):
        attempts.append(1)
        cursor.execute(
            "INSERT INTO messages (author, body) VALUES (%s, %s)", ("sw", body)
        )
        cursor.execute("SELECT SLEEP(5) /* lost-write-test */")

    def kill_it():
        rows = lab.primary.sql(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE %s",
            args=("SELECT SLEEP(5) /* lost-write-test */%",),
        )
        if rows:
            lab.primary.sql(f"KILL CONNECTION {int(rows[0]['ID'])}")
            return True
        return False

    def killer():
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not kill_it():
            time.sleep(0.02)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    started = time.monotonic()
    with pytest.raises(NodeUnavailable) as caught:
        router.write(insert_then_hang)
    thread.join()
    assert caught.value.not_applied is False  # the INSERT had been sent: maybe committed
    assert attempts == [1]  # so it was not tried again, on any node
    assert time.monotonic() - started < 4.0  # no waiting out the 5 s retry budget either
