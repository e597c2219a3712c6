"""The status page (hastack-status-page on each monitoring machine), as the operator sees it:
fetched from the admin side, rendered by headless Chromium (a screenshot is kept in the test
artifacts), checked against the lab's topology and what `hastack status` says; the plots load;
and nobody reaches the page from the public side.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import struct
import subprocess
from pathlib import Path
from urllib.parse import urljoin

import httpx
import pytest
import yaml

from .conftest import REPO, poll, run

PORT = 9096  # monitoring_status_page_port
CHROMIUM_TIMEOUT = 90
WINDOW = (1400, 2200)
PLOTS = ("requests", "error_ratio", "p99", "lag")


def artifacts() -> Path:
    path = Path(os.environ.get("HASTACK_TEST_ARTIFACTS") or REPO / "tests" / "e2e" / "artifacts")
    path.mkdir(parents=True, exist_ok=True)
    return path


def png_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the PNG header and its IHDR chunk (no image library needed)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    assert data[12:16] == b"IHDR", data[:32]
    return struct.unpack(">II", data[16:24])


def chromium(*args: str) -> subprocess.CompletedProcess[str]:
    browser = shutil.which("chromium")
    if browser is None:
        pytest.fail("chromium is missing: run scripts/host-deps.sh (Debian package chromium)")
    return subprocess.run([browser, "--headless=new", "--no-sandbox", "--disable-gpu",
                           f"--window-size={WINDOW[0]},{WINDOW[1]}", *args],
                          capture_output=True, text=True, timeout=CHROMIUM_TIMEOUT)


@pytest.fixture(scope="module")
def inv(lab) -> dict:
    return yaml.safe_load(Path(lab.status["inventory"]).read_text())["all"]


@pytest.fixture(scope="module")
def mon(lab, inv) -> dict:
    name = lab.names("monitoring")[0]
    return {"name": name, **inv["hosts"][name]}


@pytest.fixture(scope="module")
def url(mon) -> str:
    """The page on the first monitoring machine's private address (the host is the admin)."""
    url = f"http://{mon['hastack_private_address']}:{PORT}/"
    poll(lambda: httpx.get(url, timeout=5).status_code == 200, 60, f"{url} to answer 200")
    return url


@pytest.fixture(scope="module")
def expected(lab, inv) -> dict:
    """What the page must show, from the lab's own inventory and `hastack status --json`
    (asked until monitoring sees every VIP held, as the page would then too)."""
    def screen():
        mon = json.loads(run("status", "--json").stdout)["monitoring"]
        vips = mon.get("vips") or {}
        return mon if vips and all(v["holders"] for v in vips.values()) else None

    monitoring = poll(screen, 60, "hastack status to see every VIP held")
    primary = [d["name"] for d in monitoring["databases"] if d["role"] == "primary"]
    return {"machines": list(inv["hosts"]),
            "vips": {vip: v["holders"] for vip, v in monitoring["vips"].items()},
            "primary": primary, "monitoring": monitoring}


def test_hastack_status_reports_the_page_active(lab, mon):
    def active():
        info = json.loads(run("status", "--json").stdout)
        daemons = info["monitoring"]["machines"][mon["name"]]["daemons"]
        return daemons.get("hastack-status-page") == "active"

    poll(active, 30, "hastack status to report hastack-status-page active")


def test_the_page_as_chromium_renders_it(url, expected):
    shot = artifacts() / "status-page.png"
    shot.unlink(missing_ok=True)
    result = chromium(f"--screenshot={shot}", url)
    assert shot.exists(), result.stderr[-2000:]
    print(f"\nstatus page screenshot: {shot}")
    assert png_size(shot.read_bytes()) == WINDOW

    dom = chromium("--dump-dom", url)
    assert dom.returncode == 0, dom.stderr[-2000:]
    html = dom.stdout
    (artifacts() / "status-page.html").write_text(html)
    for name in expected["machines"]:
        assert re.search(rf'<tr id="machine-{name}"><td>{name}</td>', html), name
    for vip, holders in expected["vips"].items():
        row = re.search(rf'<tr id="vip-{re.escape(vip)}">.*?</tr>', html, re.S)
        assert row, vip
        assert f'<td class="holders">{", ".join(holders)}</td>' in row[0], (row[0], holders)
    assert len(expected["primary"]) == 1, expected["primary"]
    primary = expected["primary"][0]
    assert re.search(rf'<tr id="db-{primary}"><td>{primary}</td><td class="role ok">primary'
                     r"</td><td>OFF</td>", html), primary
    # the four plots, as the page references them, load as PNG images
    sources = re.findall(r'<img src="([^"]+)"', html)
    assert sorted(sources) == sorted(f"plots/{p}.png" for p in PLOTS)
    for src in sources:
        answer = httpx.get(urljoin(url, src), timeout=30)
        assert answer.status_code == 200, (src, answer.status_code)
        assert answer.headers["content-type"] == "image/png"
        width, height = png_size(answer.content)
        assert 300 <= width <= 2000 and 150 <= height <= 1500, (src, width, height)


def test_api_status_is_what_collect_returns(url, mon, expected):
    data = httpx.get(urljoin(url, "api/status"), timeout=10).json()
    assert data["error"] is None
    # its own machine's Prometheus first
    assert data["source"] == f"http://{mon['hastack_private_address']}:9090"
    assert set(data) >= {"machines", "vips", "backends", "databases", "alerts", "traffic"}
    assert list(data["machines"]) == expected["machines"]
    assert set(data["vips"]) == set(expected["vips"])


def test_the_page_is_not_reachable_from_the_public_side(lab, inv, mon):
    if "hastack_public_address" not in mon:
        pytest.skip("this monitoring machine has no public address")
    host_public = str(ipaddress.ip_network(inv["vars"]["hastack_public_net"]).network_address + 1)
    s = socket.socket()
    s.settimeout(2)
    try:
        s.bind((host_public, 0))
        s.connect((mon["hastack_public_address"], PORT))
        outcome = "open"
    except ConnectionRefusedError:
        outcome = "refused"
    except OSError:
        outcome = "filtered"
    finally:
        s.close()
    assert outcome in ("refused", "filtered"), (host_public, mon["hastack_public_address"])
