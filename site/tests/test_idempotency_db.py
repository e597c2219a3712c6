"""Idempotency keys with real servers: a post sent twice is stored once, whoever resends it.

Resenders: the client (same Idempotency-Key), the browser or a proxy (same form, same
hidden key), and the app's own router (a write whose COMMIT reply was lost, repeated with
its key). Concurrent posts with one key are serialised by the key's row lock.
"""

from __future__ import annotations

import re
import threading
import uuid

import pytest
from prometheus_client import REGISTRY

from faults import FaultProxy, wait_for
from foobar.db.gtid import COOKIE_NAME
from foobar.messages import KEY_TTL_HOURS, KeyPurger
from mariadb_lab import DB_NAME

LISTING = "/api/messages?limit=20"


def unique(prefix: str = "idem") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def sample(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def rows_with_body(lab, body: str) -> int:
    return lab.primary.sql(
        f"SELECT COUNT(*) AS n FROM `{DB_NAME}`.messages WHERE body = %s", args=(body,)
    )[0]["n"]


def key_row(lab, key: str) -> dict | None:
    rows = lab.primary.sql(
        f"SELECT message_id, created_at FROM `{DB_NAME}`.idempotency_keys "
        "WHERE idempotency_key = %s",
        args=(key,),
    )
    return rows[0] if rows else None


def post(client, body: str, key: str | None = None, author: str = "ik"):
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post("/messages", json={"author": author, "body": body}, headers=headers)


def form_key(page_html: str) -> str:
    match = re.search(r'name="idempotency_key" value="([^"]+)"', page_html)
    assert match, "the form carries no idempotency key"
    return match.group(1)


# -- the JSON API -------------------------------------------------------------------------


def test_a_replayed_json_post_gets_the_first_response_and_stores_nothing(client, lab):
    key, body = unique("key"), unique()
    first = post(client, body, key)
    again = post(client, body, key)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.get_json() == first.get_json()
    assert again.get_data() == first.get_data()
    assert again.headers["Location"] == first.headers["Location"]
    assert "Idempotent-Replayed" not in first.headers
    assert again.headers["Idempotent-Replayed"] == "true"
    assert rows_with_body(lab, body) == 1
    assert key_row(lab, key)["message_id"] == first.get_json()["id"]


def test_a_replay_through_another_app_machine_is_recognised_too(make_app, lab):
    key, body = unique("key"), unique()
    first = post(make_app("app1").test_client(), body, key)
    again = post(make_app("app2").test_client(), body, key)
    assert again.headers["X-App"] == "app2"
    assert again.get_json() == first.get_json()
    assert rows_with_body(lab, body) == 1


def test_a_replay_keeps_read_your_writes_for_a_client_without_the_cookie(make_app, lab):
    key, body = unique("key"), unique()
    assert post(make_app("app1").test_client(), body, key).status_code == 201
    other = make_app("app2").test_client()  # a retry from a client that lost the first reply
    again = post(other, body, key)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert other.get_cookie(COOKIE_NAME) is not None
    listing = other.get(LISTING)
    assert body in listing.text


def test_posts_without_a_key_are_each_stored(client, lab):
    # Documented: without Idempotency-Key the API cannot tell a resend from a new post.
    body = unique()
    assert post(client, body).status_code == 201
    assert post(client, body).status_code == 201
    assert rows_with_body(lab, body) == 2


def test_a_key_reused_for_another_message_is_422_and_stores_nothing(client, lab):
    key, body, other = unique("key"), unique(), unique()
    assert post(client, body, key).status_code == 201
    reused = post(client, other, key)
    assert reused.status_code == 422
    error = reused.get_json()
    assert error["field"] == "Idempotency-Key"
    assert "different message" in error["message"]
    assert rows_with_body(lab, other) == 0
    # Same text, other author: a different message too.
    assert post(client, body, key, author="someone else").status_code == 422


def test_the_replay_is_judged_on_the_message_as_stored(client, lab):
    key, body = unique("key"), unique()
    first = post(client, body, key)
    again = client.post("/messages", json={"author": "  ik ", "body": f"\n{body}  "},
                        headers={"Idempotency-Key": key})
    assert again.status_code == 201 and again.get_json() == first.get_json()


@pytest.mark.parametrize("length", [1, 128])
def test_keys_of_1_to_128_printable_characters_are_accepted(client, lab, length):
    key = (unique("k") + " ~!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}" * 5)[:length]
    body = unique()
    assert post(client, body, key).status_code == 201
    assert post(client, body, key).headers["Idempotent-Replayed"] == "true"
    assert rows_with_body(lab, body) == 1


def test_keys_are_case_sensitive(client, lab):
    key, body = unique("Key"), unique()
    assert post(client, body, key).status_code == 201
    assert "Idempotent-Replayed" not in post(client, body, key.upper()).headers
    assert rows_with_body(lab, body) == 2


# -- the HTML form ------------------------------------------------------------------------


def test_the_form_carries_a_fresh_key_and_a_resubmission_is_stored_once(client, lab):
    page = client.get("/")
    key = form_key(page.text)
    assert key != form_key(client.get("/").text)  # one per rendering
    body = unique()
    form = {"author": "fo", "body": body, "idempotency_key": key}
    first = client.post("/messages", data=form)
    again = client.post("/messages", data=form)  # double click, or a proxy's replay
    assert (first.status_code, again.status_code) == (303, 303)
    assert first.headers["Location"] == again.headers["Location"] == "/"
    assert again.headers["Idempotent-Replayed"] == "true"
    assert rows_with_body(lab, body) == 1
    assert body in client.get("/").text


def test_a_form_from_before_keys_still_posts(client, lab):
    body = unique()
    assert client.post("/messages", data={"author": "fo", "body": body}).status_code == 303
    assert rows_with_body(lab, body) == 1


def test_a_form_key_reused_with_other_text_asks_to_post_again(client, lab):
    key = form_key(client.get("/").text)
    body, other = unique(), unique()
    client.post("/messages", data={"author": "fo", "body": body, "idempotency_key": key})
    again = client.post("/messages", data={"author": "fo", "body": other,
                                           "idempotency_key": key})
    assert again.status_code == 422
    assert "posted before with other text" in again.text
    assert other in again.text  # the text is kept in the form...
    assert form_key(again.text) != key  # ...with a new key: posting it again adds it
    assert rows_with_body(lab, other) == 0


def test_the_header_and_the_form_key_must_agree(client, lab):
    body = unique()
    response = client.post(
        "/messages",
        data={"author": "fo", "body": body, "idempotency_key": unique("a")},
        headers={"Idempotency-Key": unique("b")},
    )
    assert response.status_code == 400
    assert rows_with_body(lab, body) == 0


# -- concurrency: two posts with one key at the same moment -------------------------------


def test_concurrent_posts_with_one_key_store_one_message(make_app, lab):
    key, body = unique("key"), unique()
    clients = [make_app(f"app{i}").test_client() for i in range(8)]
    for c in clients:
        c.get(LISTING)  # connections and roles ready: the posts below really race
    start = threading.Barrier(len(clients))
    results = []

    def send(c):
        start.wait()
        response = post(c, body, key)
        results.append((response.status_code, response.get_json()))

    threads = [threading.Thread(target=send, args=(c,)) for c in clients]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert [status for status, _ in results] == [201] * len(clients)
    assert all(created == results[0][1] for _, created in results)
    assert rows_with_body(lab, body) == 1


def test_a_post_racing_an_unfinished_one_with_its_key_waits_for_its_result(make_app, lab):
    """Forced interleaving: the first post holds the key, uncommitted, while the second
    one asks for it; the second must wait and then return the first one's message."""
    key, body = unique("key"), unique()
    first_client, second_client = (make_app(f"app{i}").test_client() for i in (1, 2))
    for c in (first_client, second_client):
        c.get(LISTING)
    results: dict[str, object] = {}

    def send(name, c):
        results[name] = post(c, body, key)

    def waiting(sql_prefix: str) -> bool:
        return bool(lab.primary.sql(
            "SELECT ID FROM information_schema.PROCESSLIST WHERE INFO LIKE %s "
            "AND STATE <> ''",
            args=(sql_prefix + "%",),
        ))

    with lab.primary.root() as holder, holder.cursor() as cur:
        # The first post takes the key, then waits for the messages table...
        cur.execute(f"LOCK TABLES `{DB_NAME}`.messages WRITE")
        try:
            first = threading.Thread(target=send, args=("first", first_client))
            first.start()
            wait_for(lambda: waiting("INSERT INTO messages"), 5, "the first post to hold its key")
            # ...while the second one asks for the same key and has to wait for it.
            second = threading.Thread(target=send, args=("second", second_client))
            second.start()
            wait_for(lambda: waiting("INSERT INTO idempotency_keys"), 5,
                     "the second post to wait for the key")
            assert "first" not in results and "second" not in results
        finally:
            cur.execute("UNLOCK TABLES")
    first.join(timeout=10)
    second.join(timeout=10)
    one, two = results["first"], results["second"]
    assert (one.status_code, two.status_code) == (201, 201)
    assert two.get_json() == one.get_json()
    assert two.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in one.headers
    assert rows_with_body(lab, body) == 1


# -- the router repeats a write whose outcome it could not know ----------------------------


@pytest.mark.parametrize(
    ("lost", "committed_before_loss"),
    [(b"COMMIT", True), (b"INSERT INTO messages", False)],
)
def test_a_write_whose_reply_was_lost_is_repeated_with_its_key(
    make_app, lab, lost, committed_before_loss
):
    with FaultProxy(lab.primary.port) as proxy:
        app = make_app(env={"FOOBAR_DB_PRIMARY": proxy.address})
        client = app.test_client()
        assert post(client, unique()).status_code == 201
        retries = sample("foobar_db_primary_retries_total", kind="write", reason="unavailable")
        body = unique()
        proxy.lose_reply_to(lost)
        # No Idempotency-Key: the post gets a key of its own, which is what makes the
        # router's repeat safe.
        response = post(client, body)
        assert proxy.replies_lost == 1
    assert response.status_code == 201, response.text
    assert rows_with_body(lab, body) == 1
    assert response.get_json()["body"] == body
    # Lost after the COMMIT: the first attempt had stored it, the repeat found its key.
    # Lost before: the server rolled the first attempt back, the repeat stored it.
    replayed = response.headers.get("Idempotent-Replayed") == "true"
    assert replayed is committed_before_loss
    assert sample("foobar_db_primary_retries_total", kind="write",
                  reason="unavailable") == retries + 1


# -- old keys -----------------------------------------------------------------------------


def test_old_keys_are_deleted_in_batches_along_the_created_at_index(make_app, lab):
    router = make_app().extensions["foobar"].router
    prefix = unique("old")
    old = [f"{prefix}-{i}" for i in range(5)]
    recent = f"{prefix}-recent"
    for i, key in enumerate(old):
        lab.primary.sql(
            f"INSERT INTO `{DB_NAME}`.idempotency_keys "
            "(idempotency_key, request_hash, message_id, created_at) "
            f"VALUES (%s, REPEAT('x', 32), NULL, NOW(6) - INTERVAL {KEY_TTL_HOURS} HOUR "
            "- INTERVAL %s MINUTE)",
            args=(key, 5 - i),
        )
    lab.primary.sql(
        f"INSERT INTO `{DB_NAME}`.idempotency_keys "
        "(idempotency_key, request_hash, created_at) "
        f"VALUES (%s, REPEAT('x', 32), NOW(6) - INTERVAL {KEY_TTL_HOURS} HOUR "
        "+ INTERVAL 1 MINUTE)",
        args=(recent,),
    )
    purger = KeyPurger(router, batch=2)
    assert purger.purge() == 2
    assert [key_row(lab, k) is None for k in old] == [True, True, False, False, False]
    while purger.purge():
        pass
    assert all(key_row(lab, k) is None for k in old)
    assert key_row(lab, recent) is not None  # not a day old yet
    plan = lab.primary.sql(
        f"EXPLAIN DELETE FROM `{DB_NAME}`.idempotency_keys "
        f"WHERE created_at < NOW(6) - INTERVAL {KEY_TTL_HOURS} HOUR "
        "ORDER BY created_at LIMIT 1000"
    )
    assert plan[0]["key"] == "idempotency_keys_created_at"


def test_purging_runs_at_most_once_a_minute_unless_a_backlog_remains(make_app):
    router = make_app().extensions["foobar"].router
    now = [100.0]
    purger = KeyPurger(router, every=60.0, batch=1000, clock=lambda: now[0])
    done = []
    purger.purge = lambda: done.append(now[0]) or 0
    assert purger.maybe_purge() == 0  # the first post of a process
    assert purger.maybe_purge() is None
    now[0] += 59
    assert purger.maybe_purge() is None
    now[0] += 1
    assert purger.maybe_purge() == 0
    purger.purge = lambda: done.append(now[0]) or 1000  # a full batch: more to come
    now[0] += 60
    assert purger.maybe_purge() == 1000
    assert purger.maybe_purge() == 1000  # at once, not a minute later
    assert done == [100.0, 160.0, 220.0, 220.0]


def test_a_post_purges_old_keys_as_the_site_user(client, lab):
    key = unique("expired")
    lab.primary.sql(
        f"INSERT INTO `{DB_NAME}`.idempotency_keys (idempotency_key, request_hash, created_at) "
        f"VALUES (%s, REPEAT('x', 32), NOW(6) - INTERVAL {KEY_TTL_HOURS + 1} HOUR)",
        args=(key,),
    )
    assert post(client, unique()).status_code == 201  # a new process: its first post purges
    assert key_row(lab, key) is None
