"""The first request path: LBs -> nginx -> gunicorn -> MariaDB, observed from the host."""

from __future__ import annotations

import uuid

from hastack import lb as lbtool
from hastack.lab.lab import Lab as LabApi

from .conftest import poll


def _answers(lab, vip: str, n: int) -> list[tuple[str, str]]:
    """(LB, web/app) of n requests for / through one VIP, on one connection."""
    seen = []
    with lab.client(vip) as c:
        for _ in range(n):
            r = c.get("/")
            assert r.status_code == 200
            seen.append((r.headers["x-lb"], r.headers["x-served-by"]))
    return seen


def test_every_web_and_app_machine_answers_in_turn(lab):
    webs, apps = set(lab.names("web")), set(lab.names("app"))
    for vip in lab.vips:
        seen = [served for _, served in _answers(lab, vip, 4 * len(webs) * len(apps))]
        assert {s.split("/")[0] for s in seen} == webs, seen
        assert {s.split("/")[1] for s in seen} == apps, seen


def _selections(lb: str) -> dict[str, int]:
    """How many times this LB's round-robin chose each web server (HAProxy's lbtot)."""
    return {name: int(row["lbtot"]) for name, row in lbtool.server_stats(LabApi(), lb).items()}


def test_one_lb_sends_requests_to_the_web_machines_in_turn(lab):
    """Round-robin, as HAProxy counts its choices: during a run of requests through one LB,
    every web machine is chosen as often as the others, give or take one. Counted on the
    LB, not per client: other clients (the monitoring's probe of every VIP) take turns of
    their own, so one client's consecutive requests may meet the same machine twice."""
    webs = set(lab.names("web"))
    for vip in lab.vips:
        with lab.client(vip) as c:
            lb = c.get("/").headers["x-lb"]
            before = _selections(lb)
            lbs = set()
            for _ in range(4 * len(webs)):
                r = c.get("/")
                assert r.status_code == 200
                lbs.add(r.headers["x-lb"])
        chosen = {name: n - before[name] for name, n in _selections(lb).items()}
        assert lbs == {lb}, lbs  # one LB holds a VIP
        assert set(chosen) == webs and sum(chosen.values()) >= 4 * len(webs), chosen
        assert max(chosen.values()) - min(chosen.values()) <= 1, chosen


def test_write_through_one_lb_read_through_the_other(lab):
    body = f"written through {lab.vips[0]} {uuid.uuid4()}"
    with lab.client(lab.vips[0]) as c:
        r = c.post("/messages", json={"author": "e2e", "body": body})
        assert r.status_code == 201, r.text
        created = r.json()
    with lab.client(lab.vips[-1]) as c:
        def visible():
            r = c.get(f"/api/messages/{created['id']}")
            return r.status_code == 200 and r.json()["body"] == body
        poll(visible, 10, "the row written through one LB to be readable through the other")
        listing = c.get("/api/messages").json()
        assert any(m["body"] == body for m in listing)


def test_html_form_post_redirects_and_shows_the_row(lab):
    body = f"form {uuid.uuid4()}"
    with lab.client(lab.vips[0]) as c:
        r = c.post("/messages", data={"author": "form", "body": body})
        assert r.status_code == 303
        page = c.get("/")  # the client keeps the read-your-writes cookie
        assert page.status_code == 200 and body in page.text
        assert "text/html" in page.headers["content-type"]


def test_static_assets_come_from_nginx_with_caching_headers(lab):
    with lab.client(lab.vips[0]) as c:
        r = c.get("/static/style.css")
        assert r.status_code == 200
        assert r.headers["x-served-by"].endswith("/static")
        assert "max-age=3600" in r.headers["cache-control"]


def test_a_static_asset_asked_again_comes_from_the_load_balancers_cache(lab):
    """HAProxy keeps /static/ answers in memory (max-age 60 s): a repeat costs no hop to a
    web server. A cached answer carries Age; a page never does (nginx marks it uncacheable)."""
    with lab.client(lab.vips[0]) as c:
        first = c.get("/static/logo.svg")
        again = c.get("/static/logo.svg")
        page = [c.get("/") for _ in range(2)]
    assert first.status_code == again.status_code == 200
    assert again.content == first.content
    assert "age" in again.headers, dict(again.headers)
    assert int(again.headers["age"]) <= 60
    assert again.headers["strict-transport-security"]  # the edge's headers still added
    assert all("age" not in p.headers for p in page)
