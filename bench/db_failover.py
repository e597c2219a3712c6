"""Automatic failover of the database primary on a running lab (`hastack up`): one JSON object.

Per fault on the primary of the moment (mariadbd SIGKILLed, mariadbd hung (SIGSTOP), machine
powered off, private link cut), under steady writes through the site
(hastack.chaos.dbfailover): detection (fault -> the cluster fenced or stopped the old primary,
from its own log), promotion (fault -> a replica writable), write outage (longest time without
an acknowledged write), acknowledged writes lost (goal 0), writes refused, split-brain writers
(goal none), rejoin of the old primary as a replica; then the cluster stack's memory per DB
node.

The cost of semi-sync (throughput and p99 of commits with and without, same run) and the
switchover are in bench/db_tier.py.

    .venv/bin/python bench/db_failover.py
        [--faults mariadbd-killed,mariadbd-hung,power-off,link-cut] [--rate 20] [--runs 1]
"""

from __future__ import annotations

import argparse
import json
import re
import time

from hastack import db
from hastack.chaos import dbfailover
from hastack.lab.lab import Lab

CLUSTER_PROCESSES = ("corosync", "corosync-qdevice", "pacemakerd", "pacemaker-based",
                     "pacemaker-fenced", "pacemaker-execd", "pacemaker-attrd",
                     "pacemaker-schedulerd", "pacemaker-controld")


def detection_s(lab: Lab, outcome: dbfailover.Outcome) -> float | None:
    """Seconds from the fault to the first line in the new primary's journal saying the old
    one is lost or failed (corosync membership, or the cluster seeing mariadbd gone)."""
    fault = outcome.fault_wall
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(fault - 2))
    # a crashed or hung mariadbd is seen by its own node's monitor; a lost node by the others
    witness = (outcome.old_primary if outcome.fault.startswith("mariadbd-")
               else outcome.new_primary)
    out = lab.run_on(witness, f"journalctl -o short-unix --since '{since}' "
                     "--no-pager -u corosync -u pacemaker", timeout=30).stdout
    pattern = re.compile(r"Members left: |Result of monitor operation for db on \S+: "
                         r"(not running|error)")
    for line in out.splitlines():
        stamp, _, text = line.partition(" ")
        if pattern.search(text):
            try:
                at = float(stamp)
            except ValueError:
                continue
            if at >= fault:
                return at - fault
    return None


def cluster_memory_mib(lab: Lab) -> dict[str, float]:
    """Resident memory (RSS, MiB) of the cluster stack's processes on each DB node."""
    names = ",".join(CLUSTER_PROCESSES)
    figures = {}
    for node in db.db_nodes(lab.require_topology()):
        out = lab.run_on(node, f"ps -C {names} -o rss=", timeout=30).stdout
        figures[node] = round(sum(int(x) for x in out.split()) / 1024, 1)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--faults", default=",".join(dbfailover.FAULTS))
    parser.add_argument("--rate", type=float, default=20, help="writes per second")
    parser.add_argument("--runs", type=int, default=1, help="runs of each fault")
    args = parser.parse_args()
    lab = Lab()
    results = []
    for fault in args.faults.split(","):
        for _ in range(args.runs):
            outcome = dbfailover.run(lab, fault, rate=args.rate)
            figures = outcome.summary()
            detected = detection_s(lab, outcome) if outcome.new_primary else None
            figures["detection_s"] = None if detected is None else round(detected, 2)
            results.append(figures)
    print(json.dumps({"failover": results, "cluster_memory_rss_mib": cluster_memory_mib(lab)},
                     indent=2))


if __name__ == "__main__":
    main()
