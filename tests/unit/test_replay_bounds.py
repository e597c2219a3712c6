"""The proxies' replay bounds (a machine that lost its power answers nothing, not even a
reset; docs/architecture.md): the rendered nginx and HAProxy configurations, and the order
their timeouts must keep for a replay to come from the right tier within a client's 2 s."""

from __future__ import annotations

import re
from pathlib import Path

import jinja2
import pytest
import yaml
from foobar.config import Config

from hastack.chaos.load import TIMEOUT as CLIENT_PATIENCE

ROLES = Path(__file__).resolve().parents[2] / "ansible" / "roles"
DEFAULTS = {role: yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())
            for role in ("web", "loadbalancer", "app")}
WEB, LB, APP = DEFAULTS["web"], DEFAULTS["loadbalancer"], DEFAULTS["app"]
APPS = {"app1": "198.19.0.31", "app2": "198.19.0.32"}
WEBS = {"web1": "198.19.0.21", "web2": "198.19.0.22"}


def seconds(value: str) -> float:
    """An nginx / HAProxy duration (300ms, 1s, 30s) in seconds."""
    found = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s)", str(value))
    assert found, value
    return float(found[1]) / (1000 if found[2] == "ms" else 1)


def _render(role: str, template: str, **extra) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLES / role / "templates"),
                             undefined=jinja2.StrictUndefined)
    env.filters["bool"] = bool  # Ansible's filter; the values here are already booleans
    hosts = {**APPS, **WEBS, "lb1": "198.19.0.11"}
    context = {
        **DEFAULTS[role],
        "inventory_hostname": "lb1" if role == "loadbalancer" else "web1",
        "groups": {"app": list(APPS), "web": list(WEBS), "loadbalancer": ["lb1"]},
        "hostvars": {h: {"hastack_private_address": a} for h, a in hosts.items()},
        "hastack_private_address": hosts["lb1" if role == "loadbalancer" else "web1"],
        "hastack_app_port": 8000, "hastack_domain": "www.foobar.com", "hastack_aliases": [],
        **extra,
    }
    return env.get_template(template).render(**context)


@pytest.fixture(scope="module")
def nginx() -> str:
    return _render("web", "foobar.conf.j2", hastack_machine_tls_dir="/etc/hastack/tls",
                   hastack_app_tls_name="app.foobar.internal")


@pytest.fixture(scope="module")
def haproxy() -> str:
    return _render("loadbalancer", "haproxy.cfg.j2", hastack_vips=[{"address": "198.18.0.100"}],
                   loadbalancer_trusted_clients=[], loadbalancer_debug_headers=False)


def _block(text: str, head: str) -> str:
    """The nginx block that starts with `head`, up to its closing brace."""
    start = text.index(head)
    indent = head[:len(head) - len(head.lstrip())]
    return text[start:text.index(f"\n{indent}}}\n", start)]


def _section(text: str, head: str) -> str:
    """The HAProxy section whose first line is `head`, up to the next section."""
    start = text.index(f"\n{head}\n") + 1
    following = re.search(r"^(?:backend|frontend|listen|peers|cache|defaults)\b", text[start + 1:],
                          re.MULTILINE)
    return text[start:] if not following else text[start:start + 1 + following.start()]


def test_the_order_of_the_bounds():
    """A live path answers before any replay; nginx replays before HAProxy does; HAProxy's
    replay is answered before the client gives up; a check through nginx to an app server
    that just died is answered (by the other app server) before the check gives up."""
    app_replay = seconds(WEB["web_app_replay_timeout"])
    web_replay = seconds(LB["loadbalancer_timeout_server_replay"])
    slowest_live_read = 1.1  # hastack chaos, "slowest answered": 1026 ms (docs/figures.md)
    path = 0.1  # a replay's own way through the other server (tens of ms here)
    assert slowest_live_read < app_replay
    assert app_replay + path < web_replay
    assert web_replay + path < CLIENT_PATIENCE
    assert app_replay + path < seconds(LB["loadbalancer_timeout_check"])
    assert seconds(WEB["web_app_keyed_connect_timeout"]) < app_replay


def test_a_request_waiting_for_a_primary_is_answered_before_any_replay_and_retried():
    """What may be replayed waits for a database primary (a switchover) less than nginx's
    replay bound, so no proxy replays it while it still waits (held requests multiplied by
    replays took every app thread: test_42's rolling restart, 102 requests failed); HAProxy
    retries its 503, one attempt after the other, as long in all as a keyless write waits."""
    hold = float(APP["app_replayable_retry_seconds"])
    path = 0.2  # the write itself once a primary exists, and the way back through nginx
    assert hold + path < seconds(WEB["web_app_replay_timeout"])
    attempts = int(LB["loadbalancer_retries"]) + 1
    assert attempts * hold >= Config.write_retry_seconds
    env = (ROLES / "app" / "templates" / "site.env.j2").read_text()
    assert "FOOBAR_REPLAYABLE_RETRY_SECONDS={{ app_replayable_retry_seconds }}" in env


def test_nginx_replays_reads_and_keyed_posts_and_never_a_keyless_post(nginx):
    keyed = _block(nginx, "upstream foobar_app_keyed {")
    reads = _block(nginx, "upstream foobar_app {")
    assert keyed.count("max_fails=0;") == len(APPS)  # slow writes never mark a server failed
    assert reads.count("max_fails=1 fail_timeout=2s;") == len(APPS)
    assert f"proxy_read_timeout {WEB['web_app_replay_timeout']};" in _block(nginx, "server {")
    assert "non_idempotent" not in _block(nginx, "    location / {")
    at_keyed = _block(nginx, "    location @keyed {")
    assert "proxy_pass https://foobar_app_keyed;" in at_keyed
    assert "proxy_next_upstream error timeout non_idempotent;" in at_keyed
    no_replay = _block(nginx, "    location @no_replay {")
    assert f"proxy_read_timeout {WEB['web_app_read_timeout']};" in no_replay
    assert seconds(WEB["web_app_read_timeout"]) >= 30
    # which POST goes where: "METHOD:key" -> the route's flag
    assert '"POST:" 1;' in _block(nginx, 'map "$request_method:$http_idempotency_key" '
                                         "$foobar_keyless_post {")
    assert '"~^POST:." 1;' in _block(nginx, 'map "$request_method:$http_idempotency_key" '
                                            "$foobar_keyed_post {")


def test_haproxy_replays_from_backend_web_only(haproxy):
    web = _section(haproxy, "backend web")
    fresh = _section(haproxy, "backend web_fresh")
    defaults = _section(haproxy, "defaults")
    assert f"timeout server {LB['loadbalancer_timeout_server_replay']}" in web
    assert "response-timeout" in defaults  # retry-on: a replay after the bound above
    retry_on = next(line for line in defaults.splitlines() if "retry-on" in line).split()
    assert "503" in retry_on  # the site's answer once a replayable request waited its limit
    assert f"retries {LB['loadbalancer_retries']}" in defaults
    assert "timeout server" not in fresh and "disable-l7-retry" in fresh
    assert f"timeout server {LB['loadbalancer_timeout_server']}" in defaults
    assert seconds(LB["loadbalancer_timeout_server"]) >= 30
