"""What TLS costs at the edge, on a running lab (`hastack up`). Prints one JSON object.

- Full TLS handshakes (ECDSA P-256, no resumption; TLS 1.3 and TLS 1.2) per second of one LB
  core: `openssl s_time -new` clients against VIP-A for a fixed time, divided by the CPU
  seconds HAProxy spent meanwhile (read from /proc on the LB holding VIP-A). The clients run
  on the same 2 cores, so the wall-clock rate is also printed but is client-bound.
- Throughput (wrk, keep-alive) of a dynamic page and of a static asset through VIP-A over
  HTTPS beside plain HTTP on the same VIP, same run: for the run only, this host is put on
  HAProxy's plain-HTTP exception list through the runtime API (gone at the next reload, and
  removed at the end), so both go through the same LB, nginx and app machines. The hops
  behind the LB are TLS in both cases: the ratio is the cost of TLS at the edge.

    .venv/bin/python bench/tls_cost.py [--seconds 8]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import time

from hastack.lab.lab import Lab

PLAIN_ACL = "/etc/haproxy/plain-http-clients.acl"  # loadbalancer_plain_http_acl
HANDSHAKE_CLIENTS = 2


def owner_of(lab: Lab, vip: str) -> str:
    for m in lab.require_topology().with_role("loadbalancer"):
        if f" {vip}/" in lab.run_checked(m.name, "ip -4 -o addr", "reading addresses"):
            return m.name
    raise SystemExit(f"no load balancer holds {vip}")


def haproxy_cpu_seconds(lab: Lab, lb: str) -> float:
    """utime + stime of every haproxy process on the LB."""
    out = lab.run_checked(lb, "for p in $(pidof haproxy); do cat /proc/$p/stat; done; "
                              "getconf CLK_TCK", "reading HAProxy's CPU time")
    lines = out.split("\n")
    ticks = float(lines[-2] if not lines[-1] else lines[-1])
    total = 0
    for line in lines[:-1]:
        if ")" in line:
            fields = line.rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / ticks


def handshakes(lab: Lab, vip: str, version: str, seconds: int) -> dict:
    lb = owner_of(lab, vip)
    cmd = ["openssl", "s_time", "-connect", f"{vip}:443", "-new", f"-{version}",
           "-time", str(seconds)]
    cpu0, t0 = haproxy_cpu_seconds(lab, lb), time.monotonic()
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
             for _ in range(HANDSHAKE_CLIENTS)]
    outputs = [p.communicate(timeout=seconds + 30)[0] for p in procs]
    wall, cpu = time.monotonic() - t0, haproxy_cpu_seconds(lab, lb) - cpu0
    done = 0
    for out in outputs:
        m = re.search(r"(\d+) connections in [\d.]+s", out)
        if not m:
            raise SystemExit(f"openssl s_time printed no result:\n{out[-500:]}")
        done += int(m.group(1))
    return {"lb": lb, "handshakes": done, "seconds": round(wall, 2),
            "haproxy_cpu_seconds": round(cpu, 2),
            "per_second_wall": round(done / wall, 1),
            "per_lb_core_second": round(done / cpu, 1) if cpu > 0 else None}


def wrk(url: str, host: str, seconds: int) -> dict:
    cmd = ["wrk", "-t2", "-c16", f"-d{seconds}s", "--latency", "-H", f"Host: {host}", url]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rps, "p99_ms": round(float(p99.group(1)) * scale, 2),
            "non_2xx": int(errors.group(1)) if errors else 0}


def throughput(lab: Lab, vip: str, seconds: int) -> dict:
    topo = lab.require_topology()
    me = str(topo.host_public)
    lb = owner_of(lab, vip)
    api = "socat stdio /run/haproxy/admin.sock"
    lab.run_checked(lb, api, "allowing plain HTTP", stdin=f"add acl {PLAIN_ACL} {me}\n")
    try:
        figures = {}
        for kind, path in (("page", "/"), ("static", "/static/style.css")):
            https = wrk(f"https://{vip}{path}", topo.domain, seconds)
            plain = wrk(f"http://{vip}{path}", topo.domain, seconds)
            figures[kind] = {"path": path, "https": https, "http": plain,
                             "https_to_http_ratio": round(https["rps"] / plain["rps"], 2)}
        return figures
    finally:
        lab.run_checked(lb, api, "removing the plain HTTP exception",
                        stdin=f"del acl {PLAIN_ACL} {me}\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8)
    args = parser.parse_args()
    lab = Lab()
    vip = str(lab.require_topology().vips[0].address)
    result = {
        "bench": "bench/tls_cost.py",
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cores": os.cpu_count(),
        "load_generators": {"handshakes": f"openssl s_time -new x{HANDSHAKE_CLIENTS}",
                            "throughput": "wrk -t2 -c16 (keep-alive)"},
        "handshakes_tls13": handshakes(lab, vip, "tls1_3", args.seconds),
        "handshakes_tls12": handshakes(lab, vip, "tls1_2", args.seconds),
        "throughput": throughput(lab, vip, args.seconds),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
