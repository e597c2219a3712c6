"""What the database cluster costs each DB node at rest, on a running lab (`hastack up`): one
JSON object.

CPU as a share of one core over a window, read inside each node from /proc: the whole node,
the cluster stack (Corosync, Pacemaker) and, apart, the resource agent's runs (its monitors
fork the agent and its clients every 1-2 s; they are reaped by pacemaker-execd, so they show
as its children's CPU). Then the cluster stack's resident memory. Run it with no load on the
site: the figures are the cluster's own price.

    .venv/bin/python bench/cluster_cost.py [--seconds 60]
"""

from __future__ import annotations

import argparse
import json

from db_failover import CLUSTER_PROCESSES, cluster_memory_mib

from hastack import db
from hastack.lab.lab import Lab

# Runs inside a node: CPU ticks (own + reaped children) per process name, twice, `window`
# seconds apart; prints {"hz":.., "names": {name: ticks, ...}, "all": ticks} of the difference.
PROBE = r"""
import json, os, sys, time
def snap():
    out = {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            s = open(f"/proc/{pid}/stat").read()
        except OSError:
            continue
        name, v = s[s.index("(") + 1:s.rindex(")")], s.rsplit(")", 1)[1].split()
        out[pid] = (name, int(v[11]) + int(v[12]), int(v[13]) + int(v[14]))
    return out
a = snap(); time.sleep(float(sys.argv[1])); b = snap()
names, total = {}, 0
for pid, (name, own, reaped) in b.items():
    if pid in a:
        d_own, d_reaped = own - a[pid][1], reaped - a[pid][2]
        names[name] = names.get(name, [0, 0])
        names[name][0] += d_own
        names[name][1] += d_reaped
        total += d_own + d_reaped
print(json.dumps({"hz": os.sysconf("SC_CLK_TCK"), "names": names, "all": total}))
"""


def cluster_cpu(lab: Lab, seconds: float) -> dict[str, dict[str, float]]:
    figures = {}
    for node in db.db_nodes(lab.require_topology()):
        out = lab.run_on(node, f"python3 - {seconds}", timeout=seconds + 30, stdin=PROBE)
        got = json.loads(out.stdout)
        share = 100 / got["hz"] / seconds
        names = got["names"]
        agent = names.get("pacemaker-execd", [0, 0])[1]
        stack = sum(names.get(n, [0, 0])[0] for n in CLUSTER_PROCESSES)
        figures[node] = {"node_pct_of_core": round(got["all"] * share, 1),
                         "cluster_stack_pct": round(stack * share, 1),
                         "resource_agent_runs_pct": round(agent * share, 1)}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60, help="measuring window")
    args = parser.parse_args()
    lab = Lab()
    print(json.dumps({"window_s": args.seconds, "cpu": cluster_cpu(lab, args.seconds),
                      "cluster_memory_rss_mib": cluster_memory_mib(lab)}, indent=2))


if __name__ == "__main__":
    main()
