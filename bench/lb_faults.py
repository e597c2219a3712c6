"""What clients see while the LB tier loses a piece: failover time, failed requests, p99.

A bounded open-loop load (new connection per request) runs against VIP-A while one fault is
injected; then the fault is repaired and the lab settles before the next one. Needs a lab
that is up (`hastack up`). Prints one JSON object.

    .venv/bin/python bench/lb_faults.py [--rate 200] [--seconds 6]

failover_s means: for LB faults, fault -> first success answered by lb2 on VIP-A; for web
faults, fault -> the web server marked DOWN on every LB (its requests were retried meanwhile).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

from hastack import chaos
from hastack.chaos import detect, health
from hastack.lab.lab import Lab
from hastack.loadgen import BackgroundLoad, LoadResult


def settle(lab: Lab) -> None:
    """Each VIP on its master and every web server UP on every LB (the checks chaos waits
    for between faults, hastack.chaos.health)."""
    topo = lab.require_topology()
    deadline = time.monotonic() + 90
    while found := health.vip_problems(lab, topo) + health.backend_problems(lab, topo):
        if time.monotonic() > deadline:
            raise SystemExit(f"lab did not settle after 90 s: {'; '.join(found)}")
        time.sleep(0.1)


def under_load(lab: Lab, inject: Callable[[], float], rate: float, seconds: float,
               header: str) -> tuple[LoadResult, float]:
    topo = lab.require_topology()
    with BackgroundLoad(f"https://{topo.vips[0].address}/", host_header=topo.domain, rate=rate,
                        timeout=2.0, record_header=header, ca_file=str(lab.ca_cert())) as bg:
        if not bg.wait_for(int(rate), 10):
            raise SystemExit("the load did not start")
        t_fault = inject()
        bg.wait_for(len(bg.live) + int(rate * seconds), seconds + 5)  # observation window
    return bg.result, t_fault


def lb_fault(lab: Lab, name: str, inject: Callable[[], float], repair: Callable[[], object],
             rate: float, seconds: float) -> dict[str, float | int | str]:
    settle(lab)
    result, t_fault = under_load(lab, inject, rate, seconds, "x-lb")
    repair()
    first = result.first_success_after(t_fault, lambda h: h == "lb2")
    return _figures(name, result, None if first is None else first - t_fault)


def web_fault(lab: Lab, name: str, server: str, inject: Callable[[], float],
              repair: Callable[[], object], rate: float, seconds: float
              ) -> dict[str, float | int | str]:
    settle(lab)
    topo = lab.require_topology()
    watcher = detect.Watcher(detect.backend_down(lab, topo, server), 0.05)

    def inject_and_watch() -> float:
        watcher.start()
        return inject()

    result, t_fault = under_load(lab, inject_and_watch, rate, seconds, "x-served-by")
    down = watcher.stop()  # every LB marked it DOWN at `down`
    repair()
    return _figures(name, result, None if down is None else down - t_fault)


def _figures(name: str, result: LoadResult, failover: float | None
             ) -> dict[str, float | int | str]:
    return {
        "fault": name,
        "failover_s": round(failover, 3) if failover is not None else "never",
        "requests": result.sent,
        "failed": result.failed,
        "p99_ms": round(result.latency_percentile(99) * 1000, 1),
        "longest_outage_ms": round(result.longest_outage * 1000, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--seconds", type=float, default=6.0)
    args = parser.parse_args()
    lab = Lab()
    rate, secs = args.rate, args.seconds
    figures = [
        lb_fault(lab, "haproxy killed (lb1)",
                 lambda: chaos.kill_service(lab, "lb1", "haproxy"),
                 lambda: chaos.start_service(lab, "lb1", "haproxy"), rate, secs),
        lb_fault(lab, "LB machine powered off (lb1)",
                 lambda: chaos.power_off(lab, "lb1"),
                 lambda: chaos.power_on(lab, "lb1"), rate, secs),
        lb_fault(lab, "LB public link cut (lb1)",
                 lambda: chaos.cut_link("lb1", "public"),
                 lambda: chaos.restore_link("lb1", "public"), rate, secs),
        web_fault(lab, "web machine powered off (web1)", "web1",
                  lambda: chaos.power_off(lab, "web1"),
                  lambda: chaos.power_on(lab, "web1"), rate, secs),
        web_fault(lab, "web nginx killed (web1)", "web1",
                  lambda: chaos.kill_service(lab, "web1", "nginx"),
                  lambda: chaos.start_service(lab, "web1", "nginx"), rate, secs),
    ]
    settle(lab)
    print(json.dumps({"rate_per_s": rate, "faults": figures}, indent=2))


if __name__ == "__main__":
    main()
