"""The load generator against real HTTP servers on 127.0.0.1: rate, bounds, outages, errors."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from hastack import loadgen
from hastack.loadgen import BackgroundLoad, LoadResult, Sample, run_load


class _Server(ThreadingHTTPServer):
    request_queue_size = 128
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, port: int, name: str) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.name = name
        self.lock = threading.Lock()
        self.connections = 0
        self.requests: list[tuple[str, str, bytes]] = []  # method, Host, body


class _Handler(BaseHTTPRequestHandler):
    """GET/POST /[500][?delay_ms=N]: 200 (or 500) naming the server in X-Served-By."""

    protocol_version = "HTTP/1.1"  # so that keep-alive is possible
    disable_nagle_algorithm = True
    server: _Server

    def setup(self) -> None:
        super().setup()
        with self.server.lock:
            self.server.connections += 1

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._answer(b"")

    def do_POST(self) -> None:
        self._answer(self.rfile.read(int(self.headers.get("Content-Length", 0))))

    def _answer(self, body: bytes) -> None:
        url = urlsplit(self.path)
        with self.server.lock:
            self.server.requests.append((self.command, self.headers.get("Host", ""), body))
        time.sleep(int(parse_qs(url.query).get("delay_ms", ["0"])[0]) / 1000)
        self.send_response(500 if url.path == "/500" else 200)
        self.send_header("X-Served-By", self.server.name)
        self.send_header("X-Host", self.headers.get("Host", ""))
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


def _start(port: int = 0, name: str = "web1") -> _Server:
    server = _Server(port, name)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                     daemon=True).start()
    return server


def _stop(server: _Server) -> None:
    server.shutdown()
    server.server_close()


@contextmanager
def _serving(name: str = "web1") -> Iterator[_Server]:
    server = _start(name=name)
    try:
        yield server
    finally:
        _stop(server)


def _url(server_or_port: _Server | int, path: str = "/") -> str:
    port = server_or_port if isinstance(server_or_port, int) else server_or_port.server_port
    return f"http://127.0.0.1:{port}{path}"


@pytest.fixture
def server() -> Iterator[_Server]:
    with _serving() as s:
        yield s


def _timed(**kwargs: object) -> tuple[LoadResult, float]:
    began = time.monotonic()
    result = run_load(**kwargs)  # type: ignore[arg-type]
    return result, time.monotonic() - began


def test_rate_is_kept_on_a_fixed_timetable(server: _Server) -> None:
    result, took = _timed(url=_url(server), rate=100, duration=1.0)
    assert result.sent == 100 and result.ok == 100 and result.failed == 0
    assert took < 1.5
    first = result.samples[0].scheduled
    assert [round(s.scheduled - first, 6) for s in result.samples] == [
        round(i / 100, 6) for i in range(100)
    ]
    lags = sorted(s.start - s.scheduled for s in result.samples)
    assert lags[50] < 0.01
    assert len(server.requests) == 100
    assert server.connections == 100  # a new connection per request by default
    assert 80 < result.throughput <= 105


def test_a_slow_server_does_not_lower_the_rate(server: _Server) -> None:
    result, took = _timed(url=_url(server, "/?delay_ms=200"), rate=50, duration=0.5)
    assert result.sent == 25 and result.ok == 25  # open loop: not 0.5 / 0.2 = 3
    assert took < 0.5 + 0.4


def test_max_requests_caps(server: _Server) -> None:
    result, took = _timed(url=_url(server), rate=200, duration=5, max_requests=10)
    assert result.sent == 10 and result.ok == 10
    assert took < 1.0


def test_stop_event_stops_early(server: _Server) -> None:
    stop = threading.Event()
    threading.Timer(0.3, stop.set).start()
    result, took = _timed(url=_url(server), rate=100, duration=10, stop_event=stop)
    assert 20 <= result.sent <= 40
    assert took < 0.8


@pytest.fixture
def silent_port() -> Iterator[int]:
    """Accepts connections (the kernel does) and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen(128)
        yield sock.getsockname()[1]


def test_a_server_that_never_answers_still_ends(silent_port: int) -> None:
    result, took = _timed(url=_url(silent_port), rate=20, duration=0.5, timeout=0.3)
    assert took < 0.5 + 0.3 + 0.3
    assert result.sent == 10 and result.ok == 0 and result.failed == 10
    assert {s.error for s in result.samples} == {"timeout"}
    assert 0.3 <= result.latency_percentile(50) < 0.4
    assert result.failure_rate == 1.0


def test_saturated_concurrency_times_out_instead_of_queueing_forever(silent_port: int) -> None:
    result, took = _timed(url=_url(silent_port), rate=50, duration=0.4, timeout=0.2,
                          concurrency=2)
    assert took < 0.4 + 0.2 + 0.3
    assert result.sent == 20 and {s.error for s in result.samples} == {"timeout"}
    assert all(s.end - s.scheduled < 0.3 for s in result.samples)


def test_refused_connections_are_connect_errors() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: refused
        result = run_load(_url(port), rate=50, duration=0.1)
    assert result.sent == 5 and {s.error for s in result.samples} == {"connect"}
    assert result.served_by() == Counter()


def test_an_outage_is_measured_and_recovery_seen() -> None:
    first = _start(name="a")
    port = first.server_port
    times: dict[str, float] = {}
    second: list[_Server] = []

    def fault() -> None:
        time.sleep(0.3)
        _stop(first)
        times["down"] = time.monotonic()
        time.sleep(0.6)
        server = _Server(port, "b")  # listening again from here
        times["up"] = time.monotonic()
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01},
                         daemon=True).start()
        second.append(server)

    injector = threading.Thread(target=fault)
    injector.start()
    try:
        result = run_load(_url(port), rate=100, duration=1.3, timeout=0.5)
    finally:
        injector.join()
        for server in second:
            _stop(server)

    [(start, end)] = result.outages()
    assert times["down"] - 0.05 <= start <= times["down"] + 0.03
    assert times["up"] < end <= times["up"] + 0.05
    assert 0.5 <= result.longest_outage <= 0.7
    assert result.failed >= 50 and result.ok >= 50
    back = result.first_success_after(times["down"])
    assert back is not None and times["up"] < back <= end
    to_b = result.first_success_after(times["down"], lambda v: v == "b")
    assert to_b is not None and to_b > times["up"]
    assert result.first_success_after(times["down"], lambda v: v == "a") is None
    assert set(result.served_by()) == {"a", "b"}
    assert sum(result.served_by().values()) == result.ok


def test_5xx_fails_and_the_header_is_recorded(server: _Server) -> None:
    bad = run_load(_url(server, "/500"), rate=50, duration=0.2)
    assert bad.sent == 10 and bad.ok == 0 and bad.failed == 10 and bad.failure_rate == 1.0
    assert {s.status for s in bad.samples} == {500} and {s.error for s in bad.samples} == {None}
    assert bad.served_by() == Counter()
    [(start, end)] = bad.outages()  # never recovered: ends at the last failure
    assert end == bad.samples[-1].end

    good = run_load(_url(server), rate=50, duration=0.2)
    assert good.failed == 0 and good.served_by() == Counter({"web1": 10})
    assert good.outages() == [] and good.longest_outage == 0.0


def test_host_header_and_another_recorded_header(server: _Server) -> None:
    result = run_load(_url(server), host_header="www.foobar.com", rate=50, duration=0.1,
                      record_header="x-host")
    assert result.served_by() == Counter({"www.foobar.com": 5})
    assert {host for _, host, _ in server.requests} == {"www.foobar.com"}


def test_post_json(server: _Server) -> None:
    result = run_load(_url(server), method="POST", json_body={"n": 1}, rate=50,
                      max_requests=3)
    assert result.ok == 3
    assert [(m, json.loads(b)) for m, _, b in server.requests] == [("POST", {"n": 1})] * 3


def test_keepalive_reuses_connections(server: _Server) -> None:
    result = run_load(_url(server), rate=50, duration=0.3, keepalive=True)
    assert result.ok == 15
    assert server.connections < 5


def test_percentiles_on_a_known_delay(server: _Server) -> None:
    result = run_load(_url(server, "/?delay_ms=100"), rate=40, duration=0.5)
    assert result.sent == 20 and result.ok == 20
    for p in (50, 90, 99):
        assert 0.1 <= result.latency_percentile(p) < 0.2
    summary = result.summary()
    assert set(summary) == {"sent", "ok", "failed", "p50_ms", "p99_ms", "longest_outage_ms",
                            "throughput"}
    assert 100 <= summary["p50_ms"] < 200 and summary["longest_outage_ms"] == 0.0


def _sample(i: int, latency: float, status: int | None = 200, header: str = "x") -> Sample:
    return Sample(scheduled=i, start=i, end=i + latency, status=status,
                  error=None if status else "connect", header=header)


def test_percentile_is_nearest_rank() -> None:
    result = LoadResult([_sample(i, (i + 1) / 100) for i in range(100)])
    assert result.latency_percentile(50) == pytest.approx(0.50)
    assert result.latency_percentile(90) == pytest.approx(0.90)
    assert result.latency_percentile(99) == pytest.approx(0.99)
    assert result.latency_percentile(100) == pytest.approx(1.00)
    assert LoadResult().latency_percentile(99) == 0.0
    with pytest.raises(ValueError):
        result.latency_percentile(101)


def test_outage_windows_from_a_timeline() -> None:
    statuses = [200, None, 503, 200, 404, 200, None, 404, 200, None]
    result = LoadResult([_sample(i, 0.5, s, header=f"lb{i % 2}")
                         for i, s in enumerate(statuses)])
    assert result.outages() == [(1, 3.5), (6, 8.5), (9, 9.5)]
    assert result.longest_outage == 2.5
    assert (result.sent, result.ok, result.failed) == (10, 4, 4)  # 404 is neither
    assert result.first_success_after(4) == 5.5
    assert result.first_success_after(4, lambda v: v == "lb0") == 8.5
    assert result.first_success_after(9) is None


def test_bad_arguments_are_refused_before_any_load() -> None:
    for kwargs in ({"rate": 0}, {"duration": float("inf")}, {"timeout": 0},
                   {"max_requests": -1}, {"concurrency": 0}):
        with pytest.raises(ValueError):
            run_load("http://127.0.0.1:9/", **kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        run_load("127.0.0.1/")


def test_cli_prints_the_summary(server: _Server, capsys: pytest.CaptureFixture[str]) -> None:
    assert loadgen.main([_url(server), "--rate", "50", "--duration", "0.2",
                         "--host", "www.foobar.com"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["sent"] == 10 and summary["ok"] == 10 and summary["failed"] == 0
    with pytest.raises(SystemExit):
        loadgen.main([_url(server), "--rate", "0"])


def test_background_load_shows_samples_while_running_and_stops_with_the_block(
        server: _Server) -> None:
    with BackgroundLoad(_url(server), rate=100) as bg:
        assert bg.wait_for(20, 5)
        seen_inside = len(bg.live)
        assert bg.result is None  # still running
    assert bg.result is not None
    assert seen_inside >= 20 and bg.result.sent >= seen_inside
    assert bg.result.sent < 100 * 5  # ended by the block, not by its own bound


def test_a_plan_mixes_methods_and_urls_and_samples_keep_tag_and_note(server: _Server) -> None:
    """Request i is plan(i); its Sample carries the plan's tag and what inspect saw."""
    def plan(i: int) -> loadgen.Planned:
        if i % 2:
            return loadgen.Planned("POST", _url(server, "/w"), {"n": i},
                                   {"Idempotency-Key": f"k{i}"}, ("write", i))
        return loadgen.Planned("GET", _url(server, "/r"), tag=("read", i))

    result = run_load(_url(server), rate=50, max_requests=4, plan=plan,
                      inspect=lambda r: r.request.method)
    assert [(s.tag, s.note, s.ok) for s in result.samples] == [
        (("read", 0), "GET", True), (("write", 1), "POST", True),
        (("read", 2), "GET", True), (("write", 3), "POST", True)]
    assert sorted(json.loads(body)["n"] for method, _, body in server.requests
                  if method == "POST") == [1, 3]
