"""`hastack bench` on the lab: every kind measured through a VIP and directly, over HTTPS
(the direct routes with the client certificate their tier admits), without an error, and the
firewall opening it needs gone afterwards."""

from __future__ import annotations

import json
import subprocess

import pytest

from .conftest import one_line_error, run


@pytest.fixture(scope="module")
def bench_run(lab) -> dict:
    return json.loads(run("bench", "--seconds", "2", "--concurrency", "8", "--json",
                          timeout=600).stdout)


def test_each_kind_is_measured_through_a_vip_and_directly(bench_run):
    seen = [(m["kind"], m["route"]) for m in bench_run["measurements"]]
    assert seen == [("static", "vip"), ("static", "nginx"), ("page", "vip"), ("page", "nginx"),
                    ("page", "gunicorn"), ("write", "vip"), ("write", "nginx"),
                    ("write", "gunicorn")]
    for m in bench_run["measurements"]:
        assert m["requests"] > 0 and m["rps"] > 0, m
        assert m["errors"] == 0, m
        assert m["p50_ms"] is not None and m["p99_ms"] >= m["p50_ms"], m
    assert [(r["kind"], r["direct"]) for r in bench_run["ratios"]] == [
        ("static", "nginx"), ("page", "nginx"), ("page", "gunicorn"), ("write", "nginx"),
        ("write", "gunicorn")]
    assert bench_run["generator"]["tool"].startswith("wrk ")
    assert bench_run["generator"]["protocol"] == "HTTP/1.1 over TLS"
    assert bench_run["generator"]["cores"] >= 1


def test_the_firewall_opening_is_gone_after_the_run(lab, bench_run):
    for machine, port in (("web1", 443), ("app1", 8000)):
        rules = lab.ssh(machine, "nft list chain inet hastack input")
        assert "default-drop" in rules
        assert "hastack-bench" not in rules
        # the host (admin address) is refused again: dropped, so the connect times out
        probe = subprocess.run(
            ["curl", "-sS", "-o", "/dev/null", "--connect-timeout", "2", "-k",
             f"https://{lab.machine(machine)['addresses'][-1]}:{port}/"],
            capture_output=True, text=True)
        assert probe.returncode == 28, (machine, probe.returncode, probe.stderr)


def test_out_of_range_load_is_one_clear_line(lab):
    result = run("bench", "--concurrency", "500", check=False)
    assert result.returncode != 0
    assert one_line_error(result) == "error: --concurrency 500: give 1..64"
