"""The operator's screen from Prometheus/Alertmanager JSON (shapes recorded from the lab's
Prometheus 2.42 and Alertmanager 0.25 APIs; `machine` is the label our scrape config adds)."""

from __future__ import annotations

import json
import shutil
import subprocess

import httpx
import pytest

from hastack import status, topology

TOPO = topology.parse({})
T = 1795810373.952
ADDR = {m.name: str(m.private_address) for m in TOPO.machines}
PORTS = {"node": 9100, "haproxy": 8404, "nginx": 9113, "mysqld": 9104, "site": 8000,
         "prometheus": 9090, "alertmanager": 9093}


def vector(*series: tuple[dict, object]) -> dict:
    return {"status": "success", "data": {"resultType": "vector", "result": [
        {"metric": labels, "value": [T, str(value)]} for labels, value in series]}}


def target(machine: str, job: str, **labels) -> dict:
    return {"instance": f"{ADDR[machine]}:{PORTS[job]}", "job": job, "machine": machine,
            **labels}


def unit(machine: str, name: str, state: str = "active") -> tuple[dict, int]:
    return ({"__name__": "node_systemd_unit_state", **target(machine, "node"),
             "name": f"{name}.service", "state": state, "type": "simple"}, 1)


def healthy() -> dict:
    """A lab where everything is fine, as Prometheus would answer QUERIES."""
    up = [(dict(target(m.name, "node"), __name__="up"), 1) for m in TOPO.machines]
    for m in TOPO.machines:
        for role in m.roles:
            up += [(dict(target(m.name, job), __name__="up"), 1)
                   for job in status.ROLE_JOBS.get(role, ())]
    units = []
    for m in TOPO.machines:
        names = {"prometheus-node-exporter"}
        for role in m.roles:
            names |= set(status.role_units(TOPO, role))
        units += [unit(m.name, n) for n in sorted(names)]
    vip_a, vip_b = "198.18.0.100", "198.18.0.101"
    site = {"job": "blackbox_site", "probe": "site", "domain": "www.foobar.com"}
    dns = {"job": "blackbox_dns", "probe": "dns", "dns": "ns1", "instance": "198.18.0.53:53"}
    return {
        "up": vector(*up),
        "units": vector(*units),
        "vip_held": vector(
            ({**target("lb1", "node"), "vip": vip_a, "vrrp_instance": "VIP_0"}, 1),
            ({**target("lb1", "node"), "vip": vip_b, "vrrp_instance": "VIP_1"}, 0),
            ({**target("lb2", "node"), "vip": vip_a, "vrrp_instance": "VIP_0"}, 0),
            ({**target("lb2", "node"), "vip": vip_b, "vrrp_instance": "VIP_1"}, 1)),
        "servers": vector(*[({"__name__": "haproxy_server_status", **target(lb, "haproxy"),
                              "proxy": "web", "server": w, "state": "UP"}, 1)
                            for lb in ("lb1", "lb2") for w in ("web1", "web2")]),
        "mysql_up": vector((target("db1", "mysqld"), 1), (target("db2", "mysqld"), 1)),
        "read_only": vector((target("db1", "mysqld"), 0), (target("db2", "mysqld"), 1)),
        "io_running": vector(({**target("db2", "mysqld"), "master_host": ADDR["db1"]}, 1)),
        "sql_running": vector(({**target("db2", "mysqld"), "master_host": ADDR["db1"]}, 1)),
        "lag": vector(({**target("db2", "mysqld"), "master_host": ADDR["db1"]}, 0)),
        "probes": vector(({**site, "instance": f"https://{vip_a}/", "vip": vip_a}, 1),
                         ({**site, "instance": f"https://{vip_b}/", "vip": vip_b}, 1),
                         ({**dns, "vip": vip_a}, 1), ({**dns, "vip": vip_b}, 1)),
        "cert_expiry": vector(({**site, "instance": f"https://{vip_a}/", "vip": vip_a},
                               364.5 * 86400),
                              ({**site, "instance": f"https://{vip_b}/", "vip": vip_b},
                               364.5 * 86400)),
        "requests": vector(({}, 120.5)),
        "errors_5xx": vector(({}, 0)),
        "p99": vector(({}, "0.014625000000000058")),
    }


ALERTS = [  # /api/v2/alerts as Alertmanager 0.25 answers
    {"annotations": {"summary": "web1 does not answer (node-exporter unreachable)",
                     "budget": "25s"},
     "endsAt": "2026-11-27T20:10:00.000Z", "fingerprint": "3f1c0d5e2a9b7c11",
     "receivers": [{"name": "hastack-history"}], "startsAt": "2026-11-27T20:05:00.000Z",
     "status": {"inhibitedBy": [], "silencedBy": [], "state": "active"},
     "updatedAt": "2026-11-27T20:05:10.000Z", "generatorURL": "http://198.19.0.61:9090/graph",
     "labels": {"alertname": "MachineDown", "instance": "198.19.0.21:9100", "job": "node",
                "machine": "web1", "severity": "critical", "tier": "machine"}},
    {"annotations": {"summary": "db2 is 10 s behind its primary", "budget": "45s"},
     "fingerprint": "aa", "startsAt": "2026-11-27T20:00:00.000Z",
     "status": {"inhibitedBy": [], "silencedBy": [], "state": "active"},
     "labels": {"alertname": "ReplicationLagging", "machine": "db2", "severity": "warning",
                "tier": "database"}},
    {"annotations": {"summary": "silenced"}, "fingerprint": "bb",
     "startsAt": "2026-11-27T19:00:00.000Z",
     "status": {"inhibitedBy": [], "silencedBy": ["x"], "state": "suppressed"},
     "labels": {"alertname": "DiskFillingUp", "severity": "warning"}},
]


def test_a_healthy_lab():
    screen = status.build(TOPO, healthy(), [])
    assert {n: m["health"] for n, m in screen["machines"].items()} == dict.fromkeys(
        [m.name for m in TOPO.machines], "ok")
    assert screen["machines"]["lb1"]["daemons"] == {
        "prometheus-node-exporter": "active", "haproxy": "active", "keepalived": "active",
        "fail2ban": "active"}
    assert screen["machines"]["mon1"]["scrapes"] == {"node": True, "prometheus": True,
                                                     "alertmanager": True}
    assert screen["vips"] == {
        "198.18.0.100": {"holders": ["lb1"], "site_probe": True, "dns_answer": True,
                         "cert_days_left": 364.5},
        "198.18.0.101": {"holders": ["lb2"], "site_probe": True, "dns_answer": True,
                         "cert_days_left": 364.5}}
    assert screen["backends"] == {"lb1": {"web": {"web1": "UP", "web2": "UP"}},
                                  "lb2": {"web": {"web1": "UP", "web2": "UP"}}}
    db1, db2 = screen["databases"]
    assert (db1["name"], db1["role"], db1["read_only"]) == ("db1", "primary", False)
    assert (db2["role"], db2["replicating_from"], db2["lag_seconds"]) == (
        "replica", "198.19.0.41", 0)
    assert db2["io_running"] and db2["sql_running"]
    assert screen["traffic"] == {"requests_per_s": 120.5, "errors_5xx_per_s": 0.0,
                                 "error_ratio": 0.0, "p99_seconds": 0.014625000000000058}
    assert screen["alerts"] == []
    json.dumps(screen)  # plain JSON all the way down


def replace(answers: dict, name: str, match: dict, value) -> None:
    for r in answers[name]["data"]["result"]:
        if all(r["metric"].get(k) == v for k, v in match.items()):
            r["value"][1] = str(value)


def drop(answers: dict, name: str, match: dict) -> None:
    answers[name]["data"]["result"] = [
        r for r in answers[name]["data"]["result"]
        if not all(r["metric"].get(k) == v for k, v in match.items())]


def test_a_lab_in_trouble():
    a = healthy()
    replace(a, "up", {"machine": "web1", "job": "node"}, 0)          # web1 gone
    replace(a, "up", {"machine": "web1", "job": "nginx"}, 0)
    replace(a, "up", {"machine": "app2", "job": "site"}, 0)          # site metrics not scraped
    drop(a, "units", {"machine": "app2", "name": "foobar.service"})
    a["units"]["data"]["result"].append(
        {"metric": unit("app2", "foobar", "failed")[0], "value": [T, "1"]})
    replace(a, "vip_held", {"machine": "lb2", "vip": "198.18.0.100"}, 1)   # held twice
    replace(a, "vip_held", {"machine": "lb2", "vip": "198.18.0.101"}, 0)   # held by nobody
    replace(a, "probes", {"probe": "site", "vip": "198.18.0.101"}, 0)
    replace(a, "servers", {"machine": "lb1", "server": "web1"}, 1)
    for r in a["servers"]["data"]["result"]:
        if r["metric"]["server"] == "web1":
            r["metric"]["state"] = "DOWN"
    replace(a, "read_only", {"machine": "db2"}, 0)                    # split brain
    drop(a, "io_running", {"machine": "db2"})
    drop(a, "sql_running", {"machine": "db2"})
    drop(a, "lag", {"machine": "db2"})
    a["p99"] = vector(({}, "NaN"))                                     # no traffic at the app
    a["requests"] = vector(({}, 10))
    a["errors_5xx"] = vector(({}, 2.5))
    screen = status.build(TOPO, a, ALERTS)
    web1, app2 = screen["machines"]["web1"], screen["machines"]["app2"]
    assert web1["health"] == "down" and set(web1["daemons"].values()) == {"unknown"}
    assert app2["health"] == "degraded"
    assert app2["problems"] == ["foobar failed", "site not scraped"]
    assert screen["vips"]["198.18.0.100"]["holders"] == ["lb1", "lb2"]
    assert screen["vips"]["198.18.0.101"]["holders"] == []
    assert screen["vips"]["198.18.0.101"]["site_probe"] is False
    assert screen["backends"]["lb1"]["web"] == {"web1": "DOWN", "web2": "UP"}
    assert [d["role"] for d in screen["databases"]] == ["primary", "primary"]
    assert screen["traffic"]["error_ratio"] == 0.25 and screen["traffic"]["p99_seconds"] is None
    # firing alerts, critical first; the silenced one is left out
    assert [(x["alertname"], x["labels"]) for x in screen["alerts"]] == [
        ("MachineDown", {"machine": "web1", "tier": "machine"}),
        ("ReplicationLagging", {"machine": "db2", "tier": "database"})]
    text = "\n".join(status.summary_lines(screen))
    assert "alerts: 2 firing" in text and "MachineDown" in text
    assert "VIP 198.18.0.101: held by NOBODY; site FAIL" in text
    assert "VIP 198.18.0.100: held by lb1, lb2" in text
    assert "lb1 web: web1 DOWN web2 UP" in text
    assert "app2: degraded (foobar failed, site not scraped)" in text
    assert "5xx 2.5/s (25.00%), p99 ?" in text


def test_nothing_scraped_yet_is_unknown_not_ok():
    screen = status.build(TOPO, {}, None)
    assert {m["health"] for m in screen["machines"].values()} == {"unknown"}
    assert screen["vips"]["198.18.0.100"] == {"holders": None, "site_probe": None,
                                              "dns_answer": None, "cert_days_left": None}
    assert [d["role"] for d in screen["databases"]] == ["unknown", "unknown"]
    assert screen["traffic"]["requests_per_s"] is None
    status.summary_lines(screen)  # renders without data too
    # an error answer from Prometheus counts as no data
    assert status.samples({"status": "error", "error": "bad query"}) == []


def test_collect_asks_the_first_monitoring_machine_that_answers():
    topo = topology.parse({"counts": {"monitoring": 2}})
    answers = healthy()
    asked = []

    def get(url, params):
        asked.append(url)
        if url.startswith("http://198.19.0.61"):
            raise httpx.ConnectError("connection refused")
        if url.endswith("/api/v2/alerts"):
            assert params == {"active": "true", "silenced": "false", "inhibited": "false"}
            return ALERTS
        name = next(n for n, q in status.QUERIES.items() if q == params["query"])
        return answers[name]

    screen = status.collect(topo, get)
    assert screen["source"] == "http://198.19.0.62:9090" and screen["error"] is None
    assert asked[0] == "http://198.19.0.61:9090/api/v1/query"
    assert len(screen["alerts"]) == 2


def test_collect_can_ask_a_named_monitoring_machine_first():
    topo = topology.parse({"counts": {"monitoring": 2}})
    asked = []

    def get(url, params):
        asked.append(url)
        if url.endswith("/api/v2/alerts"):
            return []
        name = next(n for n, q in status.QUERIES.items() if q == params["query"])
        return healthy()[name]

    assert status.collect(topo, get, first="mon2")["source"] == "http://198.19.0.62:9090"
    assert {u.split("/")[2] for u in asked} == {"198.19.0.62:9090", "198.19.0.62:9093"}
    assert [p for p, _ in status.endpoints(topo)] == [
        "http://198.19.0.61:9090", "http://198.19.0.62:9090"]  # unchanged without `first`


def matrix(*series: tuple[dict, list]) -> dict:
    return {"status": "success", "data": {"resultType": "matrix", "result": [
        {"metric": labels, "values": [[t, str(v)] for t, v in points]}
        for labels, points in series]}}


def test_series_parses_a_range_answer():
    answer = matrix(({"machine": "db2"}, [(T, 0), (T + 15, "NaN"), (T + 30, 2.5)]))
    assert status.series(answer) == [({"machine": "db2"}, [(T, 0.0), (T + 15, None),
                                                           (T + 30, 2.5)])]
    assert status.series(healthy()["requests"]) == []  # a vector is not a range
    assert status.series({"status": "error"}) == []


def test_collect_ranges_asks_the_first_monitoring_machine_that_answers():
    topo = topology.parse({"counts": {"monitoring": 2}})
    asked = []

    def get(url, params):
        asked.append((url, params))
        if url.startswith("http://198.19.0.62"):
            raise httpx.ConnectError("connection refused")
        assert url.endswith("/api/v1/query_range")
        return matrix(({}, [(T, 1.0)]))

    got = status.collect_ranges(topo, T - 3600, T, 15, get, first="mon2")
    assert got["source"] == "http://198.19.0.61:9090" and got["error"] is None
    assert set(got["series"]) == set(status.RANGE_QUERIES)
    assert asked[0][0].startswith("http://198.19.0.62")
    assert asked[-1][1] == {"query": status.RANGE_QUERIES["lag"], "start": f"{T - 3600:.3f}",
                            "end": f"{T:.3f}", "step": "15"}

    def down(url, params):
        raise httpx.ConnectTimeout("timed out")

    got = status.collect_ranges(topo, T - 3600, T, 15, down)
    assert got["source"] is None and "198.19.0.62:9090: timed out" in got["error"]
    assert got["series"] == {name: [] for name in status.RANGE_QUERIES}


def test_collect_reports_unreachable_monitoring_without_raising():
    def get(url, params):
        raise httpx.ConnectTimeout("timed out")

    screen = status.collect(TOPO, get)
    assert screen == {"source": None, "error": "http://198.19.0.61:9090: timed out"}
    assert status.summary_lines(screen) == [
        "monitoring: unavailable (http://198.19.0.61:9090: timed out)"]
    no_mon = topology.parse({"counts": {"monitoring": 0, "replicas": 0}})
    assert "no machine with role monitoring" in status.collect(no_mon, get)["error"]


def test_alertmanager_down_still_gives_the_rest():
    def get(url, params):
        if "9093" in url:
            raise httpx.ConnectError("refused")
        name = next(n for n, q in status.QUERIES.items() if q == params["query"])
        return healthy()[name]

    screen = status.collect(TOPO, get)
    assert screen["alerts"] == [] and "9093" in screen["alerts_error"]
    assert screen["machines"]["lb1"]["health"] == "ok"


def test_merge_adds_keys_and_changes_none():
    lab_status = {  # Lab.status() as it is
        "site": {"domain": "www.foobar.com", "aliases": ["foobar.com"],
                 "vips": ["198.18.0.100", "198.18.0.101"], "dns": "198.18.0.53",
                 "ca_cert": "/var/lib/hastack/lab/secrets/tls/ca.crt",
                 "url": "https://www.foobar.com/"},
        "lab": "up", "inventory": "/var/lib/hastack/lab/inventory.yml",
        "machines": [{"name": m.name, "roles": list(m.roles), "addresses": m.addresses,
                      "state": "running"} for m in TOPO.machines],
    }
    before = json.loads(json.dumps(lab_status))
    screen = status.build(TOPO, healthy(), [])
    merged = status.merge(lab_status, screen)
    assert lab_status == before  # not modified in place
    for key, value in before.items():
        if key != "machines":
            assert merged[key] == value
    for old, new in zip(before["machines"], merged["machines"], strict=True):
        assert {k: new[k] for k in old} == old
        assert new["health"] == "ok"
        assert ("haproxy" in new["daemons"]) == ("loadbalancer" in old["roles"])
    assert merged["monitoring"] is screen


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool missing")
def test_every_query_parses(tmp_path):
    rules = {"groups": [{"name": "status", "rules": [
        {"record": f"hastack_status:{name}", "expr": q}
        for name, q in [*status.QUERIES.items(), *status.RANGE_QUERIES.items()]]}]}
    path = tmp_path / "queries.yml"
    path.write_text(json.dumps(rules))
    result = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr
