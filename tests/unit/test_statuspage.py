"""The status page: its HTML from a canned screen, its plots from canned query_range answers,
its HTTP answers, its topology from the inventory JSON, and the imports it may use on a
monitoring machine (only hastack's wheel, httpx and matplotlib are installed there)."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import threading
from http.server import ThreadingHTTPServer

import httpx
import pytest

from hastack import inventory, status, statuspage, statusplots, topology

from .test_status import ALERTS, TOPO, T, healthy, matrix


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk; fails if it is not a PNG."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def canned_get(answers: dict | None = None, alerts: list | None = None, ranges=None):
    """A Prometheus + Alertmanager answering from canned JSON; records what was asked."""
    asked = []

    def get(url, params):
        asked.append(url)
        if url.endswith("/api/v2/alerts"):
            return alerts if alerts is not None else []
        if url.endswith("/api/v1/query_range"):
            name = next(n for n, q in status.RANGE_QUERIES.items() if q == params["query"])
            return (ranges or {}).get(name, matrix())
        name = next(n for n, q in status.QUERIES.items() if q == params["query"])
        return (answers or healthy())[name]

    get.asked = asked
    return get


def test_the_page_shows_what_hastack_status_shows():
    screen = status.build(TOPO, healthy(), ALERTS)
    page = statuspage.render_page(TOPO, {"source": "http://198.19.0.61:9090", "error": None,
                                         **screen}, T)
    for m in TOPO.machines:
        assert f'<tr id="machine-{m.name}"><td>{m.name}</td>' in page
    assert '<tr id="vip-198.18.0.100"><td>198.18.0.100</td><td class="holders">lb1</td>' in page
    assert '<tr id="vip-198.18.0.101"><td>198.18.0.101</td><td class="holders">lb2</td>' in page
    assert '<tr id="db-db1"><td>db1</td><td class="role ok">primary</td><td>OFF</td>' in page
    assert '<tr id="db-db2"><td>db2</td><td class="role ok">replica</td><td>ON</td>' in page
    assert "Alerts: 2 firing" in page and "MachineDown" in page
    assert page.index("MachineDown") < page.index("ReplicationLagging")  # critical first
    assert "DiskFillingUp" not in page  # silenced
    assert "120.5 req/s" in page and "p99 <b>15 ms</b>" in page
    assert '<span class="ok">web1 UP</span>' in page
    for p in statusplots.PLOTS:
        assert f'<img src="plots/{p.name}.png"' in page
    assert '<meta http-equiv="refresh" content="30">' in page
    assert 'href="http://198.19.0.61:9090/graph"' in page  # Prometheus' UI for ad-hoc queries
    # no external assets: nothing is fetched from another origin
    assert "src=\"http" not in page and "<link" not in page and "<script" not in page


def test_the_page_shows_trouble_and_escapes_what_it_prints():
    answers = healthy()
    answers["up"]["data"]["result"] = [r for r in answers["up"]["data"]["result"]
                                       if r["metric"]["machine"] != "web1"]
    for r in answers["vip_held"]["data"]["result"]:
        r["value"][1] = "0"
    alerts = [dict(ALERTS[0], annotations={"summary": "<script>alert(1)</script>"})]
    screen = {"source": "x", "error": None, **status.build(TOPO, answers, alerts)}
    page = statuspage.render_page(TOPO, screen, T)
    assert '<td class="health dim">unknown</td>' in page  # web1: not scraped
    assert '<td class="holders"><span class="bad">NOBODY</span></td>' in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_monitoring_unavailable_is_said_and_the_topology_still_listed():
    screen = {"source": None, "error": "http://198.19.0.61:9090: timed out"}
    page = statuspage.render_page(TOPO, screen, T)
    assert '<p class="banner">Monitoring unavailable: http://198.19.0.61:9090: timed out' in page
    assert all(f'id="machine-{m.name}"' in page for m in TOPO.machines)
    assert "Prometheus</a>" not in page


def test_each_plot_is_a_png_of_the_last_hour():
    lag = matrix(({"machine": "db2", "master_host": "198.19.0.41"},
                  [(T - 3600 + 15 * i, i % 7) for i in range(241)]),
                 ({"machine": "db3"}, [(T - 60, 0), (T - 45, "NaN"), (T - 30, 1)]))
    requests = matrix(({}, [(T - 3600 + 15 * i, 100 + i) for i in range(241)]))
    get = canned_get(ranges={"lag": lag, "requests": requests})
    page = statuspage.StatusPage(TOPO, "mon1", get, clock=lambda: T)
    sizes = {p.name: png_size(page.plot(p.name)) for p in statusplots.PLOTS}
    assert sizes == dict.fromkeys(BY_NAME := statusplots.BY_NAME, (640, 260)), sizes
    assert set(BY_NAME) == set(status.RANGE_QUERIES)  # one plot per range query
    # one round of range queries for the four plots (cached for a step)
    assert len(get.asked) == len(status.RANGE_QUERIES)
    assert page.plot("nope") is None


def test_plots_are_drawn_when_prometheus_has_no_data_or_does_not_answer():
    for plot in statusplots.PLOTS:
        png = statusplots.render(plot, [], T - 3600, T)
        assert png_size(png) == (640, 260)

    def down(url, params):
        raise httpx.ConnectError("refused")

    page = statuspage.StatusPage(TOPO, "mon1", down, clock=lambda: T)
    assert png_size(page.plot("p99")) == (640, 260)
    assert page.screen()["error"] == "http://198.19.0.61:9090: refused"


@pytest.fixture
def served():
    page = statuspage.StatusPage(TOPO, "mon1", canned_get(alerts=ALERTS), clock=lambda: T)
    server = ThreadingHTTPServer(("127.0.0.1", 0), statuspage.handler(page))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_http_answers(served):
    with httpx.Client(base_url=served) as client:
        page = client.get("/")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
        assert 'id="machine-mon1"' in page.text
        api = client.get("/api/status")
        assert api.headers["content-type"] == "application/json"
        expected = status.collect(TOPO, canned_get(alerts=ALERTS))
        assert api.json() == json.loads(json.dumps(expected))
        for p in statusplots.PLOTS:
            png = client.get(f"/plots/{p.name}.png")
            assert (png.status_code, png.headers["content-type"]) == (200, "image/png")
            assert png_size(png.content) == (640, 260)
        assert client.get("/plots/nope.png").status_code == 404
        assert client.get("/plots/../etc/passwd").status_code == 404
        assert client.get("/healthz").text == "ok\n"


def test_topology_from_the_inventory_json(tmp_path):
    topo = topology.parse({"counts": {"monitoring": 2, "replicas": 2}})
    path = tmp_path / "inventory.json"
    path.write_text(json.dumps(inventory.build(topo)))
    loaded = statuspage.load_topology(path)
    assert loaded.domain == topo.domain and loaded.vips == topo.vips
    assert {m.name: (m.roles, m.private_address, m.public_address) for m in loaded.machines} \
        == {m.name: (m.roles, m.private_address, m.public_address) for m in topo.machines}
    path.write_text("{")
    with pytest.raises(Exception, match="not valid JSON"):
        statuspage.load_topology(path)


def test_the_page_imports_only_what_a_monitoring_machine_has():
    """As on a monitoring machine, where the controller's packages are not installed (httpx
    imports rich and click for its CLI when they are there, and does without)."""
    code = """
import importlib.abc, sys
ABSENT = {'typer', 'rich', 'click', 'ansible', 'ansible_runner', 'pyroute2', 'cryptography',
          'yaml', 'jinja2'}
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, Absent())
import hastack.statuspage
print(sorted(m for m in sys.modules if m.split('.')[0] == 'hastack'))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    used = set(json.loads(result.stdout.replace("'", '"')))
    allowed = {"hastack", "hastack.errors", "hastack.status", "hastack.topology",
               "hastack.statuspage", "hastack.statusplots"}
    assert {"hastack.statuspage", "hastack.status"} <= used <= allowed, used
