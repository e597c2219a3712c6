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
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from hastack import chaos, lb, siteclient
from hastack.lab.lab import Lab
from hastack.loadgen import BackgroundLoad, LoadResult


def _lb_of(vip: str, domain: str, ca: Path) -> str:
    try:
        return siteclient.get(vip, domain, "/healthz", ca, timeout=1.0).headers.get("x-lb", "")
    except httpx.HTTPError:
        return ""


def _wait(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"lab did not settle: {what} after {timeout:.0f} s")
        time.sleep(0.1)


def settle(lab: Lab) -> None:
    topo = lab.require_topology()
    vips = [str(v.address) for v in topo.vips]
    lbs = [m.name for m in topo.with_role("loadbalancer")]
    _wait(lambda: [_lb_of(v, topo.domain, lab.ca_cert()) for v in vips] == lbs[:len(vips)], 90,
          "each VIP on its master")
    _wait(lambda: all(not r["status"].startswith("DOWN")
                      for name in lbs for r in lb.server_stats(lab, name).values()), 30,
          "every web server UP")


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
    lbs = [m.name for m in lab.require_topology().with_role("loadbalancer")]
    down_at: dict[str, float] = {}

    def watch() -> None:
        deadline = time.monotonic() + seconds + 5
        while len(down_at) < len(lbs) and time.monotonic() < deadline:
            for name_ in lbs:
                if name_ not in down_at and lb.server_stats(lab, name_)[server]["status"] \
                        .startswith("DOWN"):
                    down_at[name_] = time.monotonic()
            time.sleep(0.05)

    watcher = threading.Thread(target=watch)

    def inject_and_watch() -> float:
        watcher.start()
        return inject()

    result, t_fault = under_load(lab, inject_and_watch, rate, seconds, "x-served-by")
    watcher.join()
    repair()
    out = max(down_at.values()) - t_fault if len(down_at) == len(lbs) else None
    return _figures(name, result, out)


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
