"""`hastack bench`: the generator's exact argv, how its report is read, the firewall opening
that must never outlive the run, and bad input refused before anything starts."""

from __future__ import annotations

import http.server
import os
import shutil
import ssl
import threading
from typing import Any

import pytest

from hastack import bench, pki
from hastack.errors import HastackError
from hastack.fleet import Fleet


def test_wrk_keeps_connections_and_a_write_is_a_post_script(tmp_path):
    script = bench.post_script(tmp_path)
    assert bench.wrk_argv("https://198.18.0.100/", "www.foobar.com", 8, 16) == [
        "wrk", "-t2", "-c16", "-d8s", "--latency", "-H", "Host: www.foobar.com",
        "https://198.18.0.100/"]
    assert bench.wrk_argv("https://198.19.0.21:8000/messages", "www.foobar.com", 2, 4,
                          script)[-3:] == ["-s", str(script),
                                           "https://198.19.0.21:8000/messages"]
    assert script.read_text() == (
        'wrk.method = "POST"\n'
        'wrk.body = "{\\"author\\": \\"bench\\", \\"body\\": \\"hastack bench: one write\\"}"\n'
        'wrk.headers["Content-Type"] = "application/json"\n')


WRK_REPORT = """\
Running 3s test @ https://198.18.0.100/static/style.css
  2 threads and 16 connections
  Latency Distribution
     50%  515.00us
     75%    1.16ms
     90%    2.73ms
     99%    1.53s
  67221 requests in 3.01s, 144.95MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  22326.12
"""


def test_wrk_figures_in_the_same_shape_with_units_converted():
    assert bench.parse_wrk(WRK_REPORT) == {
        "requests": 67221, "errors": 3 + 4, "rps": 22326.12,
        "p50_ms": 0.515, "p99_ms": 1530.0}


def test_ratios_are_via_vip_over_direct_with_the_issues_goals():
    def m(kind: str, route: str, rps: float) -> bench.Measurement:
        return bench.Measurement(kind, route, "x", 100, 0, rps, 1, 2, 8, 0.5)
    data = bench.report([m("static", "vip", 300), m("static", "nginx", 600),
                         m("page", "vip", 270), m("page", "nginx", 300),
                         m("page", "gunicorn", 400)], 8, 16,
                        {"web1": "2"})
    assert data["ratios"] == [
        {"kind": "static", "direct": "nginx", "ratio": 0.5, "goal": 0.6, "met": False},
        {"kind": "page", "direct": "nginx", "ratio": 0.9, "goal": None, "met": None},
        {"kind": "page", "direct": "gunicorn", "ratio": 0.68, "goal": 0.6, "met": True}]
    assert data["generator"]["concurrency"] == 16 and data["generator"]["tool"].startswith(
        "wrk ")


class RecordingFleet(Fleet):
    """Answers `nft -a list` with the rules it holds; records every command."""

    def __init__(self, leftover: bool = False):
        self.commands: list[Any] = []
        self.rules = {"7": "hastack-bench"} if leftover else {}

    def require_topology(self):  # pragma: no cover - not used here
        raise NotImplementedError

    def ssh_argv(self, machine, command=None):  # pragma: no cover - not used here
        raise NotImplementedError

    def machine_state(self, name, monitoring):  # pragma: no cover - not used here
        raise NotImplementedError

    def run_checked(self, machine, command, what, timeout=60, stdin=None):
        self.commands.append(command)
        if isinstance(command, list) and command[:2] == ["nft", "-a"]:
            return "\n".join(f'  ip saddr 198.19.0.1 tcp dport 443 counter packets 0 bytes 0 '
                             f'accept comment "{c}" # handle {h}'
                             for h, c in self.rules.items())
        if isinstance(command, list) and command[:2] == ["nft", "delete"]:
            del self.rules[command[-1]]
        elif isinstance(command, str) and "insert" in command:
            self.rules["12"] = "hastack-bench"
        return ""


def test_the_opening_is_removed_when_the_run_fails():
    fleet = RecordingFleet()
    with pytest.raises(RuntimeError), bench.admitted(fleet, "web1", "198.19.0.1", 443):
        assert fleet.rules == {"12": "hastack-bench"}
        raise RuntimeError("wrk died")
    assert fleet.rules == {}
    insert = [c for c in fleet.commands if isinstance(c, str)]
    assert insert == ["nft insert rule inet hastack input ip saddr 198.19.0.1 tcp dport 443 "
                      "counter accept comment '\"hastack-bench\"'"]


def test_an_interrupted_runs_opening_is_removed_first():
    fleet = RecordingFleet(leftover=True)
    with bench.admitted(fleet, "app1", "198.19.0.1", 8000):
        assert fleet.rules == {"12": "hastack-bench"}
    assert fleet.rules == {}


@pytest.mark.parametrize(("seconds", "concurrency", "message"), [
    (0, 16, "--seconds 0: give 1..60"), (61, 16, "--seconds 61: give 1..60"),
    (8, 0, "--concurrency 0: give 1..64"), (8, 65, "--concurrency 65: give 1..64")])
def test_out_of_range_input_is_refused_before_anything_runs(seconds, concurrency, message):
    fleet = RecordingFleet()
    with pytest.raises(HastackError, match=message):
        bench.run(fleet, seconds, concurrency)
    assert fleet.commands == []


@pytest.fixture()
def mtls_server(tmp_path, monkeypatch):
    """A loopback HTTPS server that admits only certificates of the environment's CA (as
    nginx and gunicorn do), and the client PEM of one machine of it."""
    monkeypatch.setenv("HASTACK_CACHE", str(tmp_path / "cache"))
    tls = pki.ensure(tmp_path / "secrets", "www.foobar.com", [],
                     {"server": ["127.0.0.1"], "lb1": ["198.19.0.11"]})
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls / "server.crt", tls / "server.key")
    context.load_verify_locations(tls / "ca.crt")
    context.verify_mode = ssl.CERT_REQUIRED

    class Static(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 - the stdlib's name
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Static)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"https://127.0.0.1:{server.server_address[1]}", bench.client_pem(
        tmp_path / "secrets", "lb1", tmp_path)
    server.shutdown()


@pytest.mark.skipif(shutil.which("wrk") is None or shutil.which("cc") is None,
                    reason="wrk and cc come with make deps")
def test_wrk_presents_the_client_certificate_only_through_the_preload(mtls_server, tmp_path):
    url, pem = mtls_server
    route = bench.Route("nginx", "web1", url, "lb1")
    kind = bench.Kind("static", "/static/style.css")
    preload = bench.clientcert_preload()
    assert preload.parent == tmp_path / "cache" / "bench" and bench.clientcert_preload() == preload
    m = bench.measure(kind, route, "www.foobar.com", 1, 2, pem, None, preload)
    assert m.requests > 0 and m.errors == 0, m
    # without it the server refuses every handshake: no request answered
    m = bench.measure(kind, route, "www.foobar.com", 1, 2, None, None, preload)
    assert m.requests == 0 and m.errors > 0, m
    assert os.environ.get("LD_PRELOAD") is None
