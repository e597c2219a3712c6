"""`hastack bench`: what the path through a VIP costs, against the same request made directly.

Each request kind goes through a VIP (HAProxy -> nginx -> gunicorn, TLS at every hop) and, in
the same run with the same generator, straight to one nginx and to one gunicorn; the ratio is
the VIP's throughput over the direct one's.

The generator is ApacheBench (`ab`, Debian's apache2-utils): it is the packaged load generator
that presents a client certificate (`-E`), and the direct requests need one, as the tiers
admit only each other: nginx takes a load balancer's certificate, gunicorn a web server's.
The direct requests present exactly those, from this environment's secrets. The firewall
admits the controller's admin address to that nginx and that gunicorn for the run only: a
rule at the top of their input chain, deleted at the end (a deploy also drops it, as it loads
the whole table anew), and any left by an interrupted run is deleted before a new one.

ab speaks HTTP/1.0, which HAProxy's cache of static files neither stores nor serves, so one
more figure, beside the ratios: the static asset through the VIP over HTTP/1.1 (wrk, when
installed), as browsers get it.
"""

from __future__ import annotations

import os
import re
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from hastack import paths, pki
from hastack.errors import HastackError
from hastack.fleet import Fleet

MAX_SECONDS = 60
MAX_CONCURRENCY = 64
RULE_COMMENT = "hastack-bench"
WRITE_BODY = '{"author": "bench", "body": "hastack bench: one write"}'
# The goals of issue 9: the VIP path keeps at least this share of the direct throughput.
GOALS = {("page", "gunicorn"): 0.6, ("static", "nginx"): 0.6}


@dataclass(frozen=True)
class Kind:
    name: str
    path: str
    post: bool = False


KINDS = (Kind("static", "/static/style.css"), Kind("page", "/"),
         Kind("write", "/messages", post=True))
DIRECT = ("nginx", "gunicorn")
# The routes each kind is measured on: a static asset never reaches gunicorn.
ROUTES = {"static": ("vip", "nginx"), "page": ("vip", "nginx", "gunicorn"),
          "write": ("vip", "nginx", "gunicorn")}


@dataclass(frozen=True)
class Route:
    name: str            # vip, nginx or gunicorn
    machine: str | None  # the machine answering directly (None: a VIP)
    url: str             # scheme://address:port, no path
    cert: str | None     # machine whose client certificate is presented


@dataclass
class Measurement:
    kind: str
    route: str
    target: str
    requests: int
    errors: int
    keepalive_requests: int
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    seconds: float
    generator_cores: float  # CPU the generator itself used, in cores


def ab_argv(url: str, host: str, seconds: int, concurrency: int, pem: Path | None,
            body: Path | None) -> list[str]:
    """ab with keep-alive for `seconds`; -n after -t, so the time limit is what ends it."""
    argv = ["ab", "-k", "-q", "-r", "-c", str(concurrency), "-t", str(seconds),
            "-n", "100000000", "-H", f"Host: {host}"]
    if pem is not None:
        argv += ["-E", str(pem)]
    if body is not None:
        argv += ["-p", str(body), "-T", "application/json"]
    return argv + [url]


def parse_ab(text: str) -> dict[str, Any]:
    """ab's report: requests, errors, req/s, p50/p99 (ms).

    Errors are failed connections, receives and exceptions plus non-2xx answers. ab's
    "Length" failures are not errors: a page changes length as messages are written.
    """
    def number(pattern: str, default: str | None = None) -> float:
        match = re.search(pattern, text, re.MULTILINE)
        if match is None:
            if default is None:
                raise HastackError(f"ab printed no '{pattern}' line: {text.strip()[-300:]}")
            return float(default)
        return float(match.group(1))

    # "Failed requests: N" is followed by "(Connect: c, Receive: r, Length: l, Exceptions: e)"
    # when N > 0
    causes = re.search(r"\(Connect: (\d+), Receive: (\d+), Length: \d+, Exceptions: (\d+)\)",
                       text)
    failed = sum(int(n) for n in causes.groups()) if causes else 0
    non_2xx = int(number(r"^Non-2xx responses:\s+(\d+)", "0"))
    percentile = {p: number(rf"^\s+{p}%\s+(\d+)", "nan") for p in (50, 99)}
    return {
        "requests": int(number(r"^Complete requests:\s+(\d+)")),
        "errors": failed + non_2xx,
        "keepalive_requests": int(number(r"^Keep-Alive requests:\s+(\d+)", "0")),
        "rps": number(r"^Requests per second:\s+([\d.]+)"),
        "p50_ms": None if percentile[50] != percentile[50] else percentile[50],
        "p99_ms": None if percentile[99] != percentile[99] else percentile[99],
    }


def wrk_argv(url: str, host: str, seconds: int, concurrency: int) -> list[str]:
    return ["wrk", "-t2", f"-c{concurrency}", f"-d{seconds}s", "--latency",
            "-H", f"Host: {host}", url]


def _wrk_ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(text: str) -> dict[str, Any]:
    """wrk's report, in parse_ab's shape (wrk keeps every connection alive)."""
    done = re.search(r"^\s+(\d+) requests in", text, re.MULTILINE)
    rps = re.search(r"^Requests/sec:\s+([\d.]+)", text, re.MULTILINE)
    if done is None or rps is None:
        raise HastackError(f"wrk printed no figures: {text.strip()[-300:]}")
    latency = {p: re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)$", text, re.MULTILINE)
               for p in (50, 99)}
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), "
                       r"timeout (\d+)", text)
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors = (sum(int(n) for n in socket.groups()) if socket else 0) + (
        int(non_2xx.group(1)) if non_2xx else 0)
    requests = int(done.group(1))
    return {"requests": requests, "errors": errors, "keepalive_requests": requests,
            "rps": float(rps.group(1)),
            **{f"p{p}_ms": _wrk_ms(*m.groups()) if m else None for p, m in latency.items()}}


def routes(fleet: Fleet) -> dict[str, Route]:
    """The VIP, the first web server's nginx and the first app server's gunicorn."""
    topo = fleet.require_topology()
    missing = [r for r in ("loadbalancer", "web", "app") if not topo.with_role(r)]
    if missing or not topo.vips:
        raise HastackError(f"the topology has no {', '.join(missing) or 'VIP'}: nothing to "
                           "measure")
    lb, web, app = (topo.with_role(r)[0] for r in ("loadbalancer", "web", "app"))
    return {
        "vip": Route("vip", None, f"https://{topo.vips[0].address}", None),
        "nginx": Route("nginx", web.name, f"https://{web.private_address}", lb.name),
        "gunicorn": Route("gunicorn", app.name,
                          f"https://{app.private_address}:{app_port()}", web.name),
    }


def app_port() -> int:
    """hastack_app_port, where the playbook sets it."""
    data = yaml.safe_load((paths.ANSIBLE_DIR / "group_vars" / "all.yml").read_text())
    return int(data["hastack_app_port"])


def client_pem(secrets: Path, machine: str, directory: Path) -> Path:
    """One file with `machine`'s certificate and key, as ab -E wants them (mode 0600)."""
    tls = pki.tls_dir(secrets)
    cert, key = tls / f"{machine}.crt", tls / f"{machine}.key"
    for f in (cert, key):
        if not f.is_file():
            raise HastackError(f"{f}: missing; the direct requests present {machine}'s "
                               "certificate: run 'hastack up' (or deploy) first")
    pem = directory / f"{machine}.pem"
    fd = os.open(pem, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(cert.read_bytes() + key.read_bytes())
    return pem


def _rule_handles(fleet: Fleet, machine: str) -> list[str]:
    listing = fleet.run_checked(machine, ["nft", "-a", "list", "chain", "inet", "hastack",
                                          "input"], "reading the firewall")
    return re.findall(rf'comment "{RULE_COMMENT}".*# handle (\d+)', listing)


def _drop_rules(fleet: Fleet, machine: str) -> None:
    for handle in _rule_handles(fleet, machine):
        fleet.run_checked(machine, ["nft", "delete", "rule", "inet", "hastack", "input",
                                    "handle", handle], "deleting the bench's firewall rule")


@contextmanager
def admitted(fleet: Fleet, machine: str, source: str, port: int) -> Iterator[None]:
    """`source` may open TCP `port` on `machine` while the block runs."""
    _drop_rules(fleet, machine)
    fleet.run_checked(machine, f"nft insert rule inet hastack input ip saddr {source} "
                               f"tcp dport {port} counter accept comment '\"{RULE_COMMENT}\"'",
                      "admitting the bench through the firewall")
    try:
        yield
    finally:
        _drop_rules(fleet, machine)


def measure(kind: Kind, route: Route, host: str, seconds: int, concurrency: int,
            pem: Path | None, body: Path | None, tool: str = "ab") -> Measurement:
    if tool == "wrk":
        argv, parse = wrk_argv(route.url + kind.path, host, seconds, concurrency), parse_wrk
    else:
        argv, parse = ab_argv(route.url + kind.path, host, seconds, concurrency, pem,
                              body if kind.post else None), parse_ab
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0 and "requests" not in result.stdout.lower():
        detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise HastackError(f"{tool} could not load {route.url}{kind.path}: {detail} (is the "
                           "site up? 'hastack status')")
    figures = parse(result.stdout)
    name = route.name if tool == "ab" else f"{route.name}-{tool}"
    return Measurement(kind.name, name, route.machine or route.url.split("//")[1],
                       seconds=round(wall, 1), generator_cores=round(cpu / wall, 2),
                       **figures)


def run(fleet: Fleet, seconds: int = 8, concurrency: int = 16,
        progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Every kind on every route, one after another; figures and ratios as a dict."""
    if not 1 <= seconds <= MAX_SECONDS:
        raise HastackError(f"--seconds {seconds}: give 1..{MAX_SECONDS}")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise HastackError(f"--concurrency {concurrency}: give 1..{MAX_CONCURRENCY}")
    if shutil.which("ab") is None:
        raise HastackError("ab (ApacheBench) is not installed: apt-get install apache2-utils "
                           "(or run 'make deps')")
    topo = fleet.require_topology()
    admin = str(topo.host_private)
    by_name = routes(fleet)
    direct = [r for r in by_name.values() if r.machine is not None]
    cores = {r.machine: fleet.run_checked(r.machine, "nproc", "counting cores").strip()
             for r in direct if r.machine}
    results: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="hastack-bench-") as tmp:
        body = Path(tmp) / "write.json"
        body.write_text(WRITE_BODY)
        pems = {r.name: client_pem(fleet.secrets, r.cert, Path(tmp)) for r in direct if r.cert}
        with admitted(fleet, by_name["nginx"].machine or "", admin, 443), \
             admitted(fleet, by_name["gunicorn"].machine or "", admin, app_port()):
            for kind in KINDS:
                for name in ROUTES[kind.name]:
                    route = by_name[name]
                    progress(f"{kind.name} via {name} ({route.url}{kind.path}), {seconds} s")
                    # a second unrecorded: connections and TLS sessions opened, caches warm
                    measure(kind, route, topo.domain, 1, concurrency, pems.get(name), body)
                    results.append(measure(kind, route, topo.domain, seconds, concurrency,
                                           pems.get(name), body))
        if shutil.which("wrk"):
            # ab speaks HTTP/1.0, which HAProxy's cache neither stores nor serves; clients
            # speak HTTP/1.1 or 2. The same asset through the VIP with wrk (HTTP/1.1): the
            # cache's share. Another generator, so it is beside the ratios, not in them.
            progress(f"static via vip, HTTP/1.1 with wrk ({by_name['vip'].url}), {seconds} s")
            static, vip = KINDS[0], by_name["vip"]
            measure(static, vip, topo.domain, 1, concurrency, None, None, tool="wrk")
            results.append(measure(static, vip, topo.domain, seconds, concurrency, None,
                                   None, tool="wrk"))
    return report(results, seconds, concurrency, cores)


def report(results: list[Measurement], seconds: int, concurrency: int,
           cores: dict[str | None, str]) -> dict[str, Any]:
    by = {(m.kind, m.route): m for m in results}
    ratios = []
    for (kind, route), m in by.items():
        vip = by.get((kind, "vip"))
        if route not in DIRECT or vip is None or not m.rps:
            continue
        ratio = round(vip.rps / m.rps, 2)
        goal = GOALS.get((kind, route))
        ratios.append({"kind": kind, "direct": route, "ratio": ratio, "goal": goal,
                       "met": None if goal is None else ratio >= goal})
    version = subprocess.run(["ab", "-V"], capture_output=True, text=True).stdout.split("\n")[0]
    return {
        "generator": {"tool": version.strip(), "where": "the controller (this host)",
                      "cores": os.cpu_count(), "concurrency": concurrency,
                      "keep_alive": True, "seconds": seconds},
        "machine_cores": cores,
        "measurements": [asdict(m) for m in results],
        "ratios": ratios,
    }
