"""The app against a real primary and replica: where reads go, read-your-writes, bad input."""

from __future__ import annotations

import io
import json
import uuid

import pymysql
import pytest

from foobar.db.gtid import COOKIE_NAME
from mariadb_lab import DB_NAME


def unique(prefix: str = "msg") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def row_count(lab) -> int:
    return lab.primary.sql(f"SELECT COUNT(*) AS n FROM `{DB_NAME}`.messages")[0]["n"]


def test_json_post_is_stored_and_returned(client, lab):
    body = unique()
    response = client.post("/messages", json={"author": "  ann  ", "body": body})
    assert response.status_code == 201
    created = response.get_json()
    assert created["author"] == "ann" and created["body"] == body
    assert created["created_at"].endswith("Z") and isinstance(created["id"], int)
    assert response.headers["Location"] == f"/api/messages/{created['id']}"
    assert response.headers["X-DB-Role"] == "primary"
    assert response.headers["X-DB"] == lab.primary.address
    assert response.headers["X-App"] == "app1"
    assert COOKIE_NAME in response.headers["Set-Cookie"]
    assert "HttpOnly" in response.headers["Set-Cookie"]


def test_reads_go_to_the_replica(make_app, lab):
    writer = make_app().test_client()
    body = unique()
    created = writer.post("/messages", json={"author": "bo", "body": body}).get_json()
    lab.wait_replica_caught_up()
    reader = make_app("app2").test_client()  # no cookie: a different visitor
    for path in ("/api/messages", f"/api/messages/{created['id']}", "/"):
        response = reader.get(path)
        assert response.status_code == 200, path
        assert response.headers["X-DB-Role"] == "replica", path
        assert response.headers["X-DB"] == lab.replica.address
        assert response.headers["X-App"] == "app2"
        assert body in response.text
    listing = reader.get("/api/messages?limit=1").get_json()
    assert listing == [created]


def test_listing_is_newest_first_and_limited(client):
    bodies = [unique() for _ in range(3)]
    for body in bodies:
        client.post("/messages", json={"author": "cy", "body": body})
    listing = client.get("/api/messages?limit=3").get_json()
    assert [m["body"] for m in listing] == bodies[::-1]
    assert len(client.get("/api/messages?limit=200").get_json()) <= 200


def test_missing_message_is_404_json(client):
    response = client.get("/api/messages/9223372036854775807")
    assert (response.status_code, response.mimetype) == (404, "application/json")
    assert client.get("/api/messages/99999999999999999999999").status_code == 404


def test_form_post_redirects_and_page_shows_it_escaped(client):
    body = "<script>alert('x')</script> " + unique()
    response = client.post("/messages", data={"author": "dee", "body": body})
    assert response.status_code == 303
    assert response.headers["Location"] == "/"
    page = client.get("/")
    assert page.status_code == 200
    assert "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in page.text
    assert "<script>alert" not in page.text
    assert "/static/style.css" in page.text and "/static/logo.svg" in page.text
    assert "served by app1" in page.text


def test_invalid_form_post_rerenders_with_errors(client, lab):
    before = row_count(lab)
    response = client.post("/messages", data={"author": "", "body": "kept text"})
    assert response.status_code == 422
    assert "author must not be empty" in response.text
    assert "kept text" in response.text
    assert row_count(lab) == before


def test_read_your_writes_on_a_healthy_replica(client, lab):
    body = unique()
    client.post("/messages", json={"author": "eve", "body": body})
    response = client.get("/api/messages?limit=5")
    assert body in response.text
    assert response.headers["X-DB-Role"] == "replica"  # waited for the GTID, then read there


def test_cookie_works_on_another_app_machine(make_app):
    app1 = make_app("app1").test_client()
    app2 = make_app("app2").test_client()
    body = unique()
    app1.post("/messages", json={"author": "fay", "body": body})
    app2.set_cookie(COOKIE_NAME, app1.get_cookie(COOKIE_NAME).value)
    response = app2.get("/api/messages?limit=5")
    assert response.headers["X-App"] == "app2"
    assert body in response.text


def test_cookie_keeps_the_newest_position(client):
    client.post("/messages", json={"author": "gus", "body": unique()})
    first = client.get_cookie(COOKIE_NAME).value
    client.post("/messages", json={"author": "gus", "body": unique()})
    second = client.get_cookie(COOKIE_NAME).value
    app = client.application
    cookie = app.extensions["foobar"].gtid_cookie
    old, new = cookie.loads(first), cookie.loads(second)
    assert int(new.split("-")[-1]) > int(old.split("-")[-1])


@pytest.mark.parametrize("value", ["garbage", "0-1-999999999", "eyJhIjoxfQ.x.y", "\u2603"])
def test_tampered_cookie_is_ignored(client, value):
    client.set_cookie(COOKIE_NAME, value)
    response = client.get("/api/messages?limit=1")
    assert response.status_code == 200
    assert response.headers["X-DB-Role"] == "replica"


def test_injection_strings_are_stored_as_text(client, lab):
    author = "x' OR '1'='1"
    body = "'); DROP TABLE messages; -- " + unique()
    created = client.post("/messages", json={"author": author, "body": body}).get_json()
    assert (created["author"], created["body"]) == (author, body)
    assert client.get(f"/api/messages/{created['id']}").get_json()["body"] == body
    assert row_count(lab) > 0


def test_bad_input_leaves_the_table_unchanged(client, lab):
    before = row_count(lab)
    attempts = [
        client.post("/messages", data="{oops", content_type="application/json"),
        client.post(
            "/messages",
            data=json.dumps({"author": "a", "body": "x" * 20000}),
            content_type="application/json",
        ),
        client.post("/messages", json={"author": ["a"], "body": "b"}),
        client.post("/messages", json={"author": "a", "body": 5}),
        client.post("/messages", json={"author": "a"}),
        client.post("/messages", json={"author": "a" * 41, "body": "b"}),
        client.post("/messages", json={"author": "a", "body": "nul\x00"}),
        client.post("/messages", json=["author", "body"]),
        client.post("/messages", data={"author": "a", "body": "b" * 501}),
        client.post("/messages", data="author=a&body=b", content_type="text/csv"),
        client.put("/messages", json={"author": "a", "body": "b"}),
        client.delete("/api/messages/1"),
        client.post("/api/messages", json={"author": "a", "body": "b"}),
        client.get("/api/messages?limit=1;DROP TABLE messages"),
        client.get("/api/messages/1%20OR%201=1"),
        client.get("/admin"),
    ]
    for response in attempts:
        assert 400 <= response.status_code < 500, (response.request.path, response.status_code)
        assert response.headers["X-App"] == "app1"
    assert row_count(lab) == before


def test_replica_refuses_writes_from_the_site_user(lab):
    with (
        lab.replica.site() as conn,
        conn.cursor() as cur,
        pytest.raises(pymysql.err.OperationalError) as caught,
    ):
        cur.execute("INSERT INTO messages (author, body) VALUES ('x', 'y')")
    assert caught.value.args[0] == 1290  # --read-only


def test_readyz_with_both_nodes_up(client, lab):
    client.get("/api/messages?limit=1")  # let the router check the replica once
    response = client.get("/readyz")
    assert response.status_code == 200
    body = response.get_json()
    assert body["ready"] is True
    nodes = {n["node"]: n for n in body["nodes"]}
    assert nodes[lab.primary.address]["ok"] and nodes[lab.replica.address]["ok"]
    assert nodes[lab.replica.address]["replication"]["healthy"] is True


def test_metrics_count_queries_by_role(client):
    client.post("/messages", json={"author": "hal", "body": unique()})
    client.get("/api/messages?limit=1")
    text = client.get("/metrics").text
    assert 'foobar_db_queries_total{kind="write",role="primary"}' in text
    assert 'foobar_db_queries_total{kind="read",role="replica"}' in text
    assert "foobar_read_your_writes_waits_total" in text


def test_chunked_form_post_is_read_whole(client):
    body = unique()
    response = client.post(
        "/messages",
        input_stream=io.BytesIO(f"author=kim&body={body}".encode()),
        content_type="application/x-www-form-urlencoded",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},  # as gunicorn sets it
    )
    assert response.status_code == 303
    assert body in client.get("/api/messages?limit=5").text
