"""Monitoring, end to end: real faults, real Prometheus and Alertmanager, and the alert
history service as the receiver. Each test measures fault → notification received and
prints it beside the rule's stated budget (docs/monitoring.md).

Prometheus, Alertmanager and the history are read over the admin address, as an operator
would (the firewall allows exactly that).
"""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest

from hastack import alerthistory, siteclient
from hastack.chaos import primitives
from hastack.lab.lab import Lab as LabApi

from .conftest import deploy_with, in_role, poll, run

PROMETHEUS_PORT = 9090
RESOLVED_BUDGET = 25  # scrape 5 s + evaluation 5 s + Alertmanager's group_interval 15 s


@pytest.fixture(scope="module")
def mon(lab):
    names = lab.names("monitoring")
    if not names:
        pytest.skip("this topology has no monitoring machine")
    machine = lab.machine(names[0])
    return next(a for a in machine["addresses"] if a.startswith("198.19."))


def events_since(mon: str, alertname: str, status: str, since: float) -> list[dict]:
    return alerthistory.events(mon, alertname, status, since)


def wait_alert(mon: str, alertname: str, status: str, since: float, budget: float,
               **labels: str) -> float:
    """Seconds from `since` until the history received that notification."""
    event = alerthistory.wait_for(mon, alertname, status, since, budget + 45, labels)
    if event is None:
        pytest.fail(f"timed out after {budget + 45:.0f} s waiting for {alertname} {status} "
                    f"{labels or ''}")
    took = alerthistory.received_at(event) - since
    print(f"\n{alertname} {status}: received {took:.1f} s after the change "
          f"(budget {budget:.0f} s), deliveries {event.get('deliveries')}")
    return took


def test_every_scrape_target_is_up(lab, mon):
    def all_up():
        r = httpx.get(f"http://{mon}:{PROMETHEUS_PORT}/api/v1/targets", timeout=5).json()
        targets = r["data"]["activeTargets"]
        down = [(t["labels"].get("job"), t["labels"].get("instance"), t.get("lastError"))
                for t in targets if t["health"] != "up"]
        return targets if targets and not down else None
    targets = poll(all_up, 90, "every scrape target up")
    jobs = {t["labels"]["job"] for t in targets}
    assert {"node", "haproxy", "nginx", "mysqld", "site", "blackbox_site", "blackbox_dns"} <= jobs
    assert len([t for t in targets if t["labels"]["job"] == "node"]) == len(lab.status["machines"])


def test_a_dead_nginx_fires_the_backend_alert_and_it_resolves(lab, mon):
    web = lab.names("web")[0]
    t_fault = time.time()
    lab.ssh(web, "systemctl stop nginx")
    try:
        fired = wait_alert(mon, "HAProxyServerDown", "firing", t_fault, 25, server=web)
    finally:
        t_heal = time.time()
        lab.ssh(web, "systemctl start nginx")
    resolved = wait_alert(mon, "HAProxyServerDown", "resolved", t_heal, RESOLVED_BUDGET,
                          server=web)
    events = events_since(mon, "HAProxyServerDown", "firing", t_fault)
    assert all(e["deliveries"] == 1 for e in events), events  # each notified exactly once
    # within the stated budgets, with the 4 s scrape timeout and one check interval to spare
    assert fired < 25 + 5 and resolved < RESOLVED_BUDGET + 5


def test_a_stopped_sql_thread_fires_the_replication_alert(lab, mon):
    replica = in_role("replica")[0]
    t_fault = time.time()
    lab.ssh(replica, "mariadb -e 'STOP SLAVE SQL_THREAD'")
    try:
        wait_alert(mon, "ReplicationStopped", "firing", t_fault, 45, machine=replica)
    finally:
        t_heal = time.time()
        lab.ssh(replica, "mariadb -e 'START SLAVE SQL_THREAD'")
    wait_alert(mon, "ReplicationStopped", "resolved", t_heal, RESOLVED_BUDGET, machine=replica)


def test_two_writable_nodes_fire_the_split_brain_alert(lab, mon):
    """The alert is the net for when the cluster does not manage the database: a managed
    replica made writable is demoted within a second or two (test_42), too fast to alert on.
    In maintenance mode nothing corrects it, and two writable nodes must be seen."""
    replica = in_role("replica")[0]
    crm = "crm_attribute --type crm_config --name maintenance-mode"
    lab.ssh(replica, f"{crm} --update true")
    try:
        # (a monitor that still saw the writable replica is cleaned up below, before the
        # cluster manages again: it would otherwise restart the replica)
        poll(lambda: "(promotable, unmanaged)" in lab.ssh(replica, "crm_mon -1"), 20,
             "the cluster in maintenance mode")
        t_fault = time.time()
        lab.ssh(replica, "mariadb -e 'SET GLOBAL read_only = OFF'")
        try:
            wait_alert(mon, "DatabaseSplitBrain", "firing", t_fault, 25)
        finally:
            t_heal = time.time()
            lab.ssh(replica, "mariadb -e 'SET GLOBAL read_only = ON'")
    finally:
        lab.ssh(replica, f"crm_resource --cleanup --resource db-clone --node {replica}; "
                         f"{crm} --delete")
    wait_alert(mon, "DatabaseSplitBrain", "resolved", t_heal, RESOLVED_BUDGET)


def _monitoring_view() -> dict:
    return json.loads(run("status", "--json").stdout)["monitoring"]


# systemd restarts a killed HAProxy within 100 ms (Restart=always) and the owner takes its
# VIP back after preempt_delay: a move that lasts ~2 s, shorter than the 5 s scrape. The test
# keeps HAProxy dead (a crash loop) until the move is seen, as an operator would meet it.


def test_killing_haproxy_moves_vip_a_in_status_and_leaves_no_vip_alert(lab, mon):
    vip_a = lab.vips[0]
    owner = _monitoring_view()["vips"][vip_a]["holders"]
    assert owner and len(owner) == 1, owner
    t_fault = time.time()
    primitives.kill_and_keep_down(LabApi(), owner[0], "haproxy")
    try:
        def moved():
            holders = _monitoring_view()["vips"][vip_a]["holders"]
            return holders and owner[0] not in holders
        poll(moved, 30, f"hastack status to show {vip_a} moved off {owner[0]}", interval=0.5)
        print(f"\nVIP-A owner change seen in hastack status {time.time() - t_fault:.1f} s "
              "after HAProxy was killed")
    finally:
        primitives.revive(LabApi(), owner[0], "haproxy")
    poll(lambda: _monitoring_view()["vips"][vip_a]["holders"] == owner, 60,
         f"{vip_a} back on {owner[0]}", interval=0.5)

    def no_vip_alert():
        firing = {a["alertname"] for a in _monitoring_view()["alerts"]}
        return not firing & {"VipHeldByNoLb", "VipHeldByTwoLbs"}
    poll(no_vip_alert, 60, "no VIP alert firing")


def test_a_burst_of_bans_fires_the_breach_alert(lab, mon):
    scanners = [f"198.18.0.{n}" for n in range(240, 245)]
    for address in scanners:
        subprocess.run(["ip", "addr", "replace", f"{address}/32", "dev", "hs-pub"], check=True)
    t_fault = time.time()
    try:
        for address in scanners:
            with siteclient.client(lab.vips[0], lab.domain, lab.ca, local_address=address,
                                   timeout=2) as c:
                for i in range(40):
                    try:
                        c.get(f"/wp-login-{i}.php")
                    except httpx.HTTPError:
                        break  # banned
        wait_alert(mon, "EdgeBanSurge", "firing", t_fault, 30)
    finally:
        for address in scanners:
            run("lb", "unban", address, check=False)
            subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "hs-pub"], check=False)


_AM_STATE = ("sha256sum /etc/prometheus/alertmanager.yml /etc/prometheus/prometheus.yml "
             "/etc/prometheus/rules/*; systemctl is-active prometheus prometheus-alertmanager")


@pytest.mark.parametrize("variables, expected", [
    ({"hastack_alert_receivers": [{"name": "chat", "type": "webhook",
                                   "url": "htps://hooks example.com/x"}]},
     "hastack_alert_receivers[0].url"),
    ({"hastack_alert_rules": [{"name": "mine", "rules": [
        {"alert": "Broken", "expr": "sum(rate(up[5m]) by", "for": "1m"}]}]},
     "hastack_alert_rules"),
    ({"hastack_alert_receivers": [{"name": "ops", "type": "webhook",
                                   "url": "https://pager.example.com/hook",
                                   "match": {"team": "ops"}}]},
     "team"),
], ids=["malformed-receiver-url", "rule-that-does-not-parse", "unknown-routing-label"])
def test_bad_alerting_input_is_refused_in_one_line_before_any_change(lab, mon, tmp_path,
                                                                     variables, expected):
    name = lab.names("monitoring")[0]
    before = lab.ssh(name, _AM_STATE)
    line, _ = deploy_with(lab, tmp_path, **variables)
    assert expected in line, line
    assert lab.ssh(name, _AM_STATE) == before
