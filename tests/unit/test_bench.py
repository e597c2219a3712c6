"""`hastack bench`: the generator's exact argv, how its report is read, the firewall opening
that must never outlive the run, and bad input refused before anything starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hastack import bench
from hastack.errors import HastackError
from hastack.fleet import Fleet

AB_REPORT = """\
Concurrency Level:      16
Time taken for tests:   8.001 seconds
Complete requests:      2398
Failed requests:        57
   (Connect: 0, Receive: 2, Length: 54, Exceptions: 1)
Non-2xx responses:      3
Keep-Alive requests:    2390
Requests per second:    299.70 [#/sec] (mean)

Connection Times (ms)
              min  mean[+/-sd] median   max
Connect:        0    0   1.1      0      14
Total:         12   53  21.0     49     262

Percentage of the requests served within a certain time (ms)
  50%     49
  66%     57
  99%    131
 100%    262 (longest request)
"""


def test_ab_keeps_connections_and_is_ended_by_time():
    argv = bench.ab_argv("https://198.18.0.100/", "www.foobar.com", 8, 16, None, None)
    assert argv == ["ab", "-k", "-q", "-r", "-c", "16", "-t", "8", "-n", "100000000",
                    "-H", "Host: www.foobar.com", "https://198.18.0.100/"]
    # -n after -t: ab's -t sets -n 50000, which would end a fast run early
    assert argv.index("-n") > argv.index("-t")


def test_a_direct_write_presents_a_certificate_and_a_json_body():
    argv = bench.ab_argv("https://198.19.0.21:8000/messages", "www.foobar.com", 2, 4,
                         Path("/t/web1.pem"), Path("/t/write.json"))
    assert argv[-7:] == ["-E", "/t/web1.pem", "-p", "/t/write.json", "-T",
                         "application/json", "https://198.19.0.21:8000/messages"]


def test_errors_are_failures_and_non_2xx_but_not_a_changing_length():
    figures = bench.parse_ab(AB_REPORT)
    assert figures == {"requests": 2398, "errors": 2 + 1 + 3, "keepalive_requests": 2390,
                       "rps": 299.7, "p50_ms": 49, "p99_ms": 131}


def test_a_clean_report_has_no_errors():
    clean = AB_REPORT.replace("Failed requests:        57\n   (Connect: 0, Receive: 2, "
                              "Length: 54, Exceptions: 1)\n", "Failed requests:        0\n")
    clean = clean.replace("Non-2xx responses:      3\n", "")
    assert bench.parse_ab(clean)["errors"] == 0


def test_a_report_without_figures_is_a_clear_error():
    with pytest.raises(HastackError, match="ab printed no"):
        bench.parse_ab("apr_socket_connect(): Connection refused (111)\n")


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
        "requests": 67221, "errors": 3 + 4, "keepalive_requests": 67221, "rps": 22326.12,
        "p50_ms": 0.515, "p99_ms": 1530.0}


def test_ratios_are_via_vip_over_direct_with_the_issues_goals():
    def m(kind: str, route: str, rps: float) -> bench.Measurement:
        return bench.Measurement(kind, route, "x", 100, 0, 100, rps, 1, 2, 8, 0.5)
    data = bench.report([m("static", "vip", 300), m("static", "nginx", 600),
                         m("page", "vip", 270), m("page", "nginx", 300),
                         m("page", "gunicorn", 400), m("static", "vip-wrk", 900)], 8, 16,
                        {"web1": "2"})
    assert data["ratios"] == [
        {"kind": "static", "direct": "nginx", "ratio": 0.5, "goal": 0.6, "met": False},
        {"kind": "page", "direct": "nginx", "ratio": 0.9, "goal": None, "met": None},
        {"kind": "page", "direct": "gunicorn", "ratio": 0.68, "goal": 0.6, "met": True}]
    assert data["generator"]["concurrency"] == 16 and data["generator"]["tool"].startswith(
        "This is ApacheBench")


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
        raise RuntimeError("ab died")
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
