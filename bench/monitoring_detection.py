"""How fast monitoring tells: per fault, fault -> alert received, beside the rule's budget;
and what monitoring costs the box (memory, CPU).

One fault at a time on a lab that is up (`hastack up`); each fault is healed and its
`resolved` notification awaited before the next. Detection is measured with the alert
history's own receive time (`received_at`) against the moment the fault was injected: the
lab's machines share the host's clock. The budget is the rule's `budget` annotation
(scrape + evaluation + for: + group_wait, docs/monitoring.md).

The cost is read from /proc (resident memory, CPU time) of the main process of every
monitoring unit on every machine: Prometheus, Alertmanager, blackbox, the alert history (and
the status page) on the monitoring machines, node-exporter everywhere, nginx- and
mysqld-exporter on their tiers. HAProxy's exporter is built into HAProxy and not counted.

    .venv/bin/python bench/monitoring_detection.py [--faults nginx,sql_thread,...] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from hastack import alerthistory, siteclient
from hastack.chaos import primitives
from hastack.lab.lab import Lab

MONITORING_UNITS = {
    "every": ("prometheus-node-exporter",),
    "web": ("prometheus-nginx-exporter",),
    "db-primary": ("prometheus-mysqld-exporter",),
    "db-replica": ("prometheus-mysqld-exporter",),
    "monitoring": ("prometheus", "prometheus-alertmanager", "prometheus-blackbox-exporter",
                   "hastack-alert-receiver", "hastack-status-page"),
}


@dataclass
class Fault:
    name: str
    alert: str
    labels: Callable[[Lab], dict[str, str]]
    inject: Callable[[Lab], None]
    heal: Callable[[Lab], None]
    what: str
    # False for rules over a long window (EdgeBanSurge: bans in the last 10 minutes): healing
    # does not end them, time does; their resolution is not measured.
    resolves_on_heal: bool = True


def _first(lab: Lab, role: str) -> str:
    return lab.require_topology().with_role(role)[0].name


def _sql(lab: Lab, machine: str, statement: str) -> None:
    lab.run_checked(machine, f"mariadb -e '{statement}'", statement)


SCANNERS = [f"198.18.0.{n}" for n in range(240, 245)]


def _scan_burst(lab: Lab) -> None:
    topo = lab.require_topology()
    for address in SCANNERS:
        subprocess.run(["ip", "addr", "replace", f"{address}/32", "dev", "hs-pub"], check=True)
    for address in SCANNERS:
        with siteclient.client(str(topo.vips[0].address), topo.domain, lab.ca_cert(),
                               local_address=address, timeout=2) as c:
            for i in range(40):
                try:
                    c.get(f"/wp-login-{i}.php")
                except httpx.HTTPError:
                    break  # banned


def _unban(lab: Lab) -> None:
    from hastack import lb
    for address in SCANNERS:
        lb.unban(lab, address)
        subprocess.run(["ip", "addr", "del", f"{address}/32", "dev", "hs-pub"], check=False)


FAULTS = {
    "nginx": Fault(
        "nginx", "HAProxyServerDown", lambda lab: {"server": _first(lab, "web")},
        lambda lab: lab.run_checked(_first(lab, "web"), "systemctl stop nginx", "stop nginx"),
        lambda lab: lab.run_checked(_first(lab, "web"), "systemctl start nginx", "start"),
        "web1's nginx stopped"),
    "sql_thread": Fault(
        "sql_thread", "ReplicationStopped", lambda lab: {"machine": _first(lab, "db-replica")},
        lambda lab: _sql(lab, _first(lab, "db-replica"), "STOP SLAVE SQL_THREAD"),
        lambda lab: _sql(lab, _first(lab, "db-replica"), "START SLAVE SQL_THREAD"),
        "the replica's SQL thread stopped"),
    "split_brain": Fault(
        "split_brain", "DatabaseSplitBrain", lambda lab: {},
        lambda lab: _sql(lab, _first(lab, "db-replica"), "SET GLOBAL read_only = OFF"),
        lambda lab: _sql(lab, _first(lab, "db-replica"), "SET GLOBAL read_only = ON"),
        "the replica made writable (two writable nodes)"),
    "haproxy": Fault(
        "haproxy", "ExporterDown",
        lambda lab: {"machine": _first(lab, "loadbalancer"), "job": "haproxy"},
        lambda lab: primitives.kill_and_keep_down(lab, _first(lab, "loadbalancer"), "haproxy"),
        lambda lab: primitives.revive(lab, _first(lab, "loadbalancer"), "haproxy"),
        "lb1's HAProxy killed and kept down (its VIP moves to lb2)"),
    "machine": Fault(
        "machine", "MachineDown", lambda lab: {"machine": lab.require_topology()
                                               .with_role("web")[-1].name},
        lambda lab: lab.stop([lab.require_topology().with_role("web")[-1].name],
                             graceful=False),
        lambda lab: lab.start([lab.require_topology().with_role("web")[-1].name]),
        "the last web machine powered off (plug pulled)"),
    "bans": Fault(
        "bans", "EdgeBanSurge", lambda lab: {}, _scan_burst, _unban,
        "five scanners probing /wp-login-N.php through VIP-A until banned",
        resolves_on_heal=False),
}


def measure(lab: Lab, mon: str, fault: Fault, timeout: float) -> dict:
    labels = fault.labels(lab)
    t_fault = time.time()
    fault.inject(lab)
    try:
        fired = alerthistory.wait_for(mon, fault.alert, "firing", t_fault, timeout, labels)
    finally:
        t_heal = time.time()
        fault.heal(lab)
    resolved = (alerthistory.wait_for(mon, fault.alert, "resolved", t_heal, timeout, labels)
                if fault.resolves_on_heal else None)
    row = {"fault": fault.name, "what": fault.what, "alert": fault.alert,
           "budget_s": alerthistory.budget_seconds(fired) if fired else None,
           "fired_s": round(alerthistory.received_at(fired) - t_fault, 1) if fired else None,
           "resolved_s": (round(alerthistory.received_at(resolved) - t_heal, 1)
                          if resolved else None),
           "deliveries": fired.get("deliveries") if fired else None}
    row["within_budget"] = (row["fired_s"] is not None and row["budget_s"] is not None
                            and row["fired_s"] <= row["budget_s"])
    return row


# systemd's cgroup accounting is not available inside the lab's machines: read each unit's
# main process from /proc (resident memory; user+system CPU ticks).
_USAGE = ("for u in {units}; do p=$(systemctl show -p MainPID --value $u.service); "
          "[ \"${{p:-0}}\" -gt 0 ] 2>/dev/null || continue; "
          "echo $u $(awk '/^VmRSS:/{{print $2}}' /proc/$p/status) "
          "$(cut -d')' -f2 /proc/$p/stat | awk '{{print $12+$13}}') $(getconf CLK_TCK); done")


def _unit_usage(lab: Lab) -> dict[str, tuple[int, float]]:
    """machine/unit -> (resident bytes, CPU seconds used so far) of its main process."""
    usage: dict[str, tuple[int, float]] = {}
    for m in lab.require_topology().machines:
        units = set(MONITORING_UNITS["every"])
        for role in m.roles:
            units |= set(MONITORING_UNITS.get(role, ()))
        out = lab.run_checked(m.name, _USAGE.format(units=" ".join(sorted(units))),
                              "reading the monitoring units' usage")
        for line in out.splitlines():
            unit, rss_kib, ticks, hz = line.split()
            usage[f"{m.name}/{unit}"] = (int(rss_kib) * 1024, int(ticks) / int(hz))
    return usage


def cost(lab: Lab, seconds: float) -> dict:
    """Monitoring's memory and CPU, as a share of this box, over a quiet window."""
    before, t0 = _unit_usage(lab), time.monotonic()
    time.sleep(seconds)  # a measuring window, not a wait for a condition
    after, elapsed = _unit_usage(lab), time.monotonic() - t0
    mem_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    cores = os.cpu_count() or 1
    per_unit = {}
    for key, (mem, cpu) in after.items():
        used = (cpu - before.get(key, (0, cpu))[1]) / elapsed
        per_unit[key] = {"memory_mib": round(mem / 2**20, 1), "cpu_cores": round(used, 4)}
    mem_sum = sum(v[0] for v in after.values())
    cpu_sum = sum(v["cpu_cores"] for v in per_unit.values())
    return {"window_s": round(elapsed, 1), "cores": cores,
            "memory_mib": round(mem_sum / 2**20, 1),
            "memory_share": round(mem_sum / mem_total, 4),
            "cpu_cores": round(cpu_sum, 3), "cpu_share": round(cpu_sum / cores, 4),
            "units": per_unit}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma-separated, from: {', '.join(FAULTS)}")
    parser.add_argument("--timeout", type=float, default=120,
                        help="seconds to wait for each notification")
    parser.add_argument("--cost-window", type=float, default=30,
                        help="seconds of quiet over which CPU is averaged")
    parser.add_argument("--json", action="store_true", help="one JSON object only")
    args = parser.parse_args()
    names = [n for n in args.faults.split(",") if n]
    unknown = [n for n in names if n not in FAULTS]
    if unknown:
        print(f"error: unknown fault {', '.join(unknown)}; use: {', '.join(FAULTS)}",
              file=sys.stderr)
        return 2
    lab = Lab()
    topo = lab.topology()
    if topo is None or not topo.with_role("monitoring"):
        print("error: no lab with a monitoring machine is up (hastack up)", file=sys.stderr)
        return 2
    mon = str(topo.with_role("monitoring")[0].private_address)
    report = {"run": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "script": "bench/monitoring_detection.py",
              "monitoring_machines": len(topo.with_role("monitoring")),
              "cost": cost(lab, args.cost_window), "faults": []}
    for name in names:
        row = measure(lab, mon, FAULTS[name], args.timeout)
        report["faults"].append(row)
        if not args.json:
            print(f"{row['what']:<60} {row['alert']:<20} fired {row['fired_s']} s "
                  f"(budget {row['budget_s']} s), resolved "
                  + (f"{row['resolved_s']} s after heal, " if FAULTS[name].resolves_on_heal
                     else "when its window passes, ") +
                  f"deliveries {row['deliveries']}", flush=True)
    if not args.json:
        c = report["cost"]
        print(f"monitoring cost over {c['window_s']} s: {c['memory_mib']} MiB "
              f"({c['memory_share']:.1%} of this box), {c['cpu_cores']} cores "
              f"({c['cpu_share']:.1%} of {c['cores']})")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
