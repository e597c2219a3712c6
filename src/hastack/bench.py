"""`hastack bench`: what the path through a VIP costs, against the same request made directly.

Each request kind goes through a VIP (HAProxy -> nginx -> gunicorn, TLS at every hop) and, in
the same run with the same generator, straight to one nginx and to one gunicorn; the ratio is
the VIP's throughput over the direct one's.

The generator is wrk (Debian's package): HTTP/1.1 with keep-alive, as browsers speak it (the
earlier generator, ab, speaks HTTP/1.0, which HAProxy's cache neither stores nor serves). The
direct requests must present a client certificate, as the tiers admit only each other: nginx
takes a load balancer's certificate, gunicorn a web server's. wrk has no option for one, so a
small preload (wrk_clientcert.c, compiled once into the cache) loads exactly those, from this
environment's secrets, into wrk's TLS context. The firewall admits the controller's admin
address to that nginx and that gunicorn for the run only: a rule at the top of their input
chain, deleted at the end (a deploy also drops it, as it loads the whole table anew), and any
left by an interrupted run is deleted before a new one.
"""

from __future__ import annotations

import hashlib
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
    rps: float
    p50_ms: float | None
    p99_ms: float | None
    seconds: float
    generator_cores: float  # CPU the generator itself used, in cores


def wrk_argv(url: str, host: str, seconds: int, concurrency: int,
             script: Path | None = None) -> list[str]:
    """wrk for `seconds` over `concurrency` kept-alive connections; `script` makes it a POST."""
    argv = ["wrk", "-t2", f"-c{concurrency}", f"-d{seconds}s", "--latency",
            "-H", f"Host: {host}"]
    if script is not None:
        argv += ["-s", str(script)]
    return argv + [url]


def post_script(directory: Path) -> Path:
    """The wrk script of a write: POST of WRITE_BODY as JSON."""
    script = directory / "write.lua"
    body = WRITE_BODY.replace("\\", "\\\\").replace('"', '\\"')
    script.write_text('wrk.method = "POST"\n'
                      f'wrk.body = "{body}"\n'
                      'wrk.headers["Content-Type"] = "application/json"\n')
    return script


def clientcert_preload() -> Path:
    """wrk_clientcert.c compiled into the cache once per version of it (cc, OpenSSL's headers)."""
    source = Path(__file__).with_name("wrk_clientcert.c")
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:12]
    target = paths.cache_dir() / "bench" / f"wrk-clientcert-{digest}.so"
    if target.is_file():
        return target
    if shutil.which("cc") is None:
        raise HastackError("cc is not installed: the bench compiles a client-certificate "
                           "preload for wrk; apt-get install gcc libssl-dev (or run 'make deps')")
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}")
    done = subprocess.run(["cc", "-shared", "-fPIC", "-O2", "-o", str(partial), str(source),
                           "-lssl", "-lcrypto", "-ldl"], capture_output=True, text=True)
    if done.returncode != 0:
        partial.unlink(missing_ok=True)
        detail = (done.stderr.strip().splitlines() or ["no output"])[0]
        raise HastackError(f"compiling {source.name} failed: {detail} (needs libssl-dev: "
                           "apt-get install libssl-dev, or run 'make deps')")
    partial.chmod(0o755)
    os.replace(partial, target)
    return target


def _wrk_ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def parse_wrk(text: str) -> dict[str, Any]:
    """wrk's report: requests, errors (socket errors and non-2xx/3xx answers), req/s,
    p50/p99 (ms)."""
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
    return {"requests": requests, "errors": errors,
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
    """One file with `machine`'s certificate and key (mode 0600)."""
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
            pem: Path | None, script: Path | None, preload: Path) -> Measurement:
    argv = wrk_argv(route.url + kind.path, host, seconds, concurrency,
                    script if kind.post else None)
    env = dict(os.environ)
    if pem is not None:  # the certificate chain and the key are both in the one file
        env.update(LD_PRELOAD=str(preload), HASTACK_WRK_CERT=str(pem), HASTACK_WRK_KEY=str(pem))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60,
                            env=env)
    wall = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0 or "requests in" not in result.stdout:
        detail = (result.stderr.strip().splitlines() or result.stdout.strip().splitlines()
                  or ["no output"])[-1]
        raise HastackError(f"wrk could not load {route.url}{kind.path}: {detail} (is the "
                           "site up? 'hastack status')")
    figures = parse_wrk(result.stdout)
    return Measurement(kind.name, route.name, route.machine or route.url.split("//")[1],
                       seconds=round(wall, 1), generator_cores=round(cpu / wall, 2),
                       **figures)


def run(fleet: Fleet, seconds: int = 8, concurrency: int = 16,
        progress: Callable[[str], None] = lambda line: None) -> dict[str, Any]:
    """Every kind on every route, one after another; figures and ratios as a dict."""
    if not 1 <= seconds <= MAX_SECONDS:
        raise HastackError(f"--seconds {seconds}: give 1..{MAX_SECONDS}")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise HastackError(f"--concurrency {concurrency}: give 1..{MAX_CONCURRENCY}")
    if shutil.which("wrk") is None:
        raise HastackError("wrk is not installed: apt-get install wrk (or run 'make deps')")
    preload = clientcert_preload()
    topo = fleet.require_topology()
    admin = str(topo.host_private)
    by_name = routes(fleet)
    direct = [r for r in by_name.values() if r.machine is not None]
    cores = {r.machine: fleet.run_checked(r.machine, "nproc", "counting cores").strip()
             for r in direct if r.machine}
    results: list[Measurement] = []
    with tempfile.TemporaryDirectory(prefix="hastack-bench-") as tmp:
        script = post_script(Path(tmp))
        pems = {r.name: client_pem(fleet.secrets, r.cert, Path(tmp)) for r in direct if r.cert}
        with admitted(fleet, by_name["nginx"].machine or "", admin, 443), \
             admitted(fleet, by_name["gunicorn"].machine or "", admin, app_port()):
            for kind in KINDS:
                for name in ROUTES[kind.name]:
                    route = by_name[name]
                    progress(f"{kind.name} via {name} ({route.url}{kind.path}), {seconds} s")
                    # a second unrecorded: connections and TLS sessions opened, caches warm
                    measure(kind, route, topo.domain, 1, concurrency, pems.get(name), script,
                            preload)
                    results.append(measure(kind, route, topo.domain, seconds, concurrency,
                                           pems.get(name), script, preload))
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
    version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split("\n")[0]
    return {
        "generator": {"tool": version.strip(), "protocol": "HTTP/1.1 over TLS",
                      "threads": 2, "where": "the controller (this host)",
                      "cores": os.cpu_count(), "concurrency": concurrency,
                      "keep_alive": True, "seconds": seconds},
        "machine_cores": cores,
        "measurements": [asdict(m) for m in results],
        "ratios": ratios,
    }
