"""App behaviour that needs no database: probes, errors, bad input, static files, metrics.

The settings point at ports nothing listens on, so these also show that a dead database
gives clean 503s and that bad input is refused before any database work.
"""

import io
import json
import time

import pytest

from conftest import offline_env
from foobar.app import create_app


def test_healthz_is_ok_without_a_database(offline_client):
    response = offline_client.get("/healthz")
    assert response.status_code == 200
    assert response.text == "ok\n"
    assert response.headers["X-App"] == "app9"


def test_readyz_is_503_and_describes_each_node(offline_client):
    response = offline_client.get("/readyz")
    assert response.status_code == 503
    body = response.get_json()
    assert body["ready"] is False and body["machine"] == "app9"
    assert [n["configured_role"] for n in body["nodes"]] == ["primary", "replica"]
    assert all(n["ok"] is False and n["error"] for n in body["nodes"])
    # Nobody answered, so nobody has a role.
    assert all(n["role"] is None and n["read_only"] is None for n in body["nodes"])
    assert body["primary"] is None


def test_database_down_is_a_503_not_a_500(offline_client):
    page = offline_client.get("/")
    assert page.status_code == 503
    assert page.mimetype == "text/html"
    assert page.headers["X-App"] == "app9"
    assert page.headers["Retry-After"] == "1"
    api = offline_client.get("/api/messages")
    assert api.status_code == 503
    assert api.get_json()["status"] == 503
    post = offline_client.post("/messages", json={"author": "a", "body": "b"})
    assert post.status_code == 503
    assert post.headers["Retry-After"] == "1"


def test_write_fails_at_once_when_no_node_answers():
    # The retry budget is for a switchover's read-only moment (every node answers, none is
    # writable). With no node answering there is no primary to wait for: a failover takes
    # longer than any budget, so the write is refused within a second, not after 5 s.
    app = create_app(offline_env(FOOBAR_WRITE_RETRY_SECONDS="5"))
    app.testing = True
    client = app.test_client()
    started = time.monotonic()
    post = client.post("/messages", json={"author": "a", "body": "b"})
    elapsed = time.monotonic() - started
    assert post.status_code == 503
    assert post.headers["Retry-After"] == "1"
    assert elapsed < 1.0


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        ("{not json", "application/json", 400),
        ("", "application/json", 400),
        ("[1, 2]", "application/json", 400),
        ('"just a string"', "application/json", 400),
        (b"\xff\xfe\xfa", "application/json", 400),
        ("[" * 5000 + "]" * 5000, "application/json", 400),
        ('{"author": 1, "body": "x"}', "application/json", 422),
        ('{"author": "a"}', "application/json", 422),
        ('{"author": "a", "body": null}', "application/json", 422),
        ('{"author": "a", "body": {"$gt": ""}}', "application/json", 422),
        ("author=a&body=b", "text/plain", 415),
    ],
)
def test_bad_posts_are_clean_4xx(offline_client, body, content_type, status):
    response = offline_client.post("/messages", data=body, content_type=content_type)
    assert response.status_code == status
    assert response.headers["X-App"] == "app9"
    assert "X-DB" not in response.headers
    if status == 422:
        error = response.get_json()
        assert error["field"] in ("author", "body")
        assert error["field"] in error["message"]


def test_oversize_body_is_413(offline_client):
    big = json.dumps({"author": "a", "body": "x" * 17000})
    assert (
        offline_client.post("/messages", data=big, content_type="application/json").status_code
        == 413
    )
    form = offline_client.post("/messages", data={"author": "a", "body": "x" * 17000})
    assert form.status_code == 413
    assert form.mimetype == "text/html"


@pytest.mark.parametrize("size", [600, 17000])
def test_chunked_bodies_are_limited_too(offline_client, size):
    body = json.dumps({"author": "a", "body": "x" * size}).encode()
    response = offline_client.post(
        "/messages",
        input_stream=io.BytesIO(body),
        content_type="application/json",
        headers={"Transfer-Encoding": "chunked"},
        environ_overrides={"wsgi.input_terminated": True},  # as gunicorn sets it
    )
    assert response.status_code == (413 if size > 16384 else 422)


def test_unknown_routes_are_404_html_or_json(offline_client):
    page = offline_client.get("/no/such/page")
    assert (page.status_code, page.mimetype) == (404, "text/html")
    assert "404" in page.text and page.headers["X-App"] == "app9"
    api = offline_client.get("/api/nope")
    assert (api.status_code, api.mimetype) == (404, "application/json")
    assert api.get_json()["status"] == 404
    assert offline_client.get("/api/messages/abc").status_code == 404
    assert offline_client.get("/api/messages/-1").status_code == 404


def test_wrong_methods_are_405_with_allow(offline_client):
    page = offline_client.delete("/")
    assert (page.status_code, page.mimetype) == (405, "text/html")
    assert "GET" in page.headers["Allow"]
    api = offline_client.put("/api/messages", json={})
    assert (api.status_code, api.mimetype) == (405, "application/json")
    assert offline_client.get("/messages").status_code == 405


@pytest.mark.parametrize("limit", ["0", "201", "x", "-5", "99999999999999999999"])
def test_bad_limit_is_400(offline_client, limit):
    response = offline_client.get(f"/api/messages?limit={limit}")
    assert response.status_code == 400
    assert response.get_json()["field"] == "limit"


@pytest.mark.parametrize(
    ("path", "mimetype"), [("/static/style.css", "text/css"), ("/static/logo.svg", "image/svg+xml")]
)
def test_static_files(offline_client, path, mimetype):
    response = offline_client.get(path)
    assert response.status_code == 200
    assert response.mimetype == mimetype
    assert response.headers["X-App"] == "app9"


def test_metrics_are_exposed(offline_client):
    offline_client.get("/healthz")
    offline_client.get("/nowhere")
    text = offline_client.get("/metrics").text
    assert 'foobar_http_requests_total{method="GET",route="/healthz",status="200"}' in text
    assert 'route="<unmatched>",status="404"' in text
    assert "foobar_http_request_duration_seconds_bucket" in text
    for name in (
        "foobar_db_queries_total",
        "foobar_read_your_writes_waits_total",
        "foobar_read_your_writes_timeouts_total",
        "foobar_replica_fallbacks_total",
        "foobar_db_primary_retries_total",
        "foobar_db_multiple_writable_total",
    ):
        assert f"# HELP {name.removesuffix('_total')}" in text


@pytest.mark.parametrize("key", ["", "x" * 129, "tab\there", "caf\u00e9", "del\x7f"])
def test_a_bad_idempotency_key_is_400_before_any_database_work(offline_client, key):
    response = offline_client.post(
        "/messages", json={"author": "a", "body": "b"}, headers={"Idempotency-Key": key}
    )
    assert response.status_code == 400
    assert "Idempotency-Key must be 1 to 128 printable ASCII characters" in (
        response.get_json()["message"]
    )
    assert "X-DB" not in response.headers
    form = offline_client.post(
        "/messages", data={"author": "a", "body": "b", "idempotency_key": key}
    )
    assert (form.status_code, form.mimetype) == (400, "text/html")


@pytest.mark.parametrize("method, headers, limit", [
    ("GET", {}, 0.7),
    ("POST", {"Idempotency-Key": "k-1"}, 0.7),
    ("POST", {}, None),  # never replayed once sent: the router's whole budget
])
def test_what_the_proxies_may_replay_waits_at_most_the_replayable_limit(
        monkeypatch, method, headers, limit):
    import foobar.app

    seen = []
    monkeypatch.setattr(foobar.app, "limit_retries", seen.append)
    app = create_app(offline_env(FOOBAR_REPLAYABLE_RETRY_SECONDS="0.7"))
    app.testing = True
    client = app.test_client()
    if method == "GET":
        response = client.get("/api/messages", headers=headers)
    else:
        response = client.post("/messages", headers=headers, json={"author": "a", "body": "b"})
    assert response.status_code == 503  # no database here; the limit was set before
    assert seen == [limit]
