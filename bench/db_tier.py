"""Database-tier figures on a running lab (`hastack up`). Prints one JSON object.

- replication lag p50/p99 under a bounded write load (default 500 writes/s for 10 s), measured
  on an app machine with the site's own credentials (GTID of each sampled write, waited for on
  the replica with MASTER_GTID_WAIT);
- what semi-synchronous replication costs a commit: closed-loop INSERTs from an app machine
  (4 threads, 8 s) with semi-sync on, off (switched at run time on the primary), on again;
- switchover write outage: the longest a write waited (or failed) while the primary moved.

Throughput through a VIP beside the same requests made directly: `hastack bench`.

    .venv/bin/python bench/db_tier.py [--rate 500] [--seconds 10]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

from hastack import db
from hastack.lab.lab import Lab
from hastack.loadgen import BackgroundLoad

HERE = Path(__file__).resolve().parent


def replication_lag(lab: Lab, rate: float, seconds: float) -> dict:
    nodes = db.status(lab)
    primary = next(n for n in nodes if n.role == "primary")
    replica = next(n for n in nodes if n.role == "replica")
    app = lab.require_topology().with_role("app")[0].name
    script = (HERE / "remote" / "replication_lag.py").read_text()
    result = lab.run_on(app, "set -a; . /etc/foobar/site.env; python3 - "
                             f"--primary {primary.address}:3306 --replica {replica.address}:3306 "
                             f"--rate {rate} --seconds {seconds}",
                        stdin=script, timeout=seconds + 60)
    if result.returncode != 0:
        raise SystemExit(f"lag probe failed on {app}: {result.stderr.strip()}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def semi_sync_cost(lab: Lab, seconds: float = 8) -> dict:
    nodes = db.status(lab)
    primary = next(n for n in nodes if n.role == "primary")
    app = lab.require_topology().with_role("app")[0].name
    script = (HERE / "remote" / "commit_cost.py").read_text()

    def run(mode: str) -> dict:
        lab.run_checked(primary.name, f"mariadb -e 'SET GLOBAL rpl_semi_sync_master_enabled"
                                      f" = {mode}'", "switching semi-sync")
        result = lab.run_on(app, "set -a; . /etc/foobar/site.env; python3 - "
                                 f"--primary {primary.address}:3306 --seconds {seconds}",
                            stdin=script, timeout=seconds + 60)
        if result.returncode != 0:
            raise SystemExit(f"commit probe failed on {app}: {result.stderr.strip()}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    try:
        figures = {"semi_sync_on": run("ON"), "async": run("OFF"),
                   "semi_sync_on_again": run("ON")}
    finally:
        lab.run_checked(primary.name, "mariadb -e 'SET GLOBAL rpl_semi_sync_master_enabled = ON'",
                        "switching semi-sync back on")
    return figures


def switchover_outage(lab: Lab) -> dict:
    nodes = db.status(lab)
    old = next(n for n in nodes if n.role == "primary").name
    target = next(n for n in nodes if n.role == "replica").name
    topo = lab.require_topology()
    hastack = str(HERE.parent / ".venv/bin/hastack")
    with BackgroundLoad(f"https://{topo.vips[0].address}/messages", host_header=topo.domain,
                        rate=50, timeout=15.0, method="POST", idempotency_keys=True,
                        json_body={"author": "b", "body": "s"}, record_header="x-db",
                        ca_file=str(lab.ca_cert())) as bg:
        bg.wait_for(100, 10)
        started = time.monotonic()
        subprocess.run([hastack, "db", "switchover", target], check=True,
                       stdout=subprocess.DEVNULL)
        total = time.monotonic() - started
        bg.wait_for(len(bg.live) + 100, 10)
    r = bg.result
    window = [s for s in r.samples if s.scheduled >= started - 1]
    worst = max((s.end - s.scheduled for s in window), default=0.0)
    subprocess.run([hastack, "db", "switchover", old], check=True, stdout=subprocess.DEVNULL)
    return {"switchover_command_s": round(total, 1), "writes": r.sent, "failed_writes": r.failed,
            "longest_write_wait_s": round(worst, 2),
            "write_outage_s": round(max(worst, r.longest_outage), 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=10)
    args = parser.parse_args()
    lab = Lab()
    figures = {"replication": replication_lag(lab, args.rate, args.seconds),
               "semi_sync_cost": semi_sync_cost(lab),
               "switchover": switchover_outage(lab)}
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
