"""The faults `hastack chaos` knows, as data: name -> inject, heal, what clients may see.

A fault is a kind (a row of KINDS) applied to one machine that has the kind's role; its name
is `<machine>-<kind>`, e.g. `web1-nginx-killed`, `db2-link-cut`. Selecting faults and checking
the load's bounds are pure (a topology in, faults or one clear error out), so `hastack chaos`
refuses bad input before it starts anything.

Expectations (what the design promises while the fault lasts, heal and recovery included):
    all      no request may fail (web, app, monitoring: every tier has a healthy twin);
    reads    no read may fail; writes may be refused (a DB node gone: reads go on elsewhere,
             writes fail fast with 503 while there is no primary);
    bounded  failures are measured, not gated (an LB's in-flight connections die with it).

A kind without a role happens to the stack as a whole and is named by its suffix alone:
`rolling-deploy` deploys the playbook with a new build id of the site (FOOBAR_BUILD), so
every app server is reloaded one at a time under the load; it is "held" for as long as the
deploy takes.

Detection (how the time the stack noticed the fault is measured):
    vip       the first request through the dying LB's VIP answered by another LB (X-LB);
    backend   the web server marked DOWN by every other LB (HAProxy's stats, polled 10/s);
    monitor   Prometheus sees the daemon or machine down (`up`/`mysql_up`, polled 2/s; its
              resolution is the 5 s scrape interval).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rich.console import Console

from hastack.chaos import primitives
from hastack.errors import HastackError
from hastack.fleet import Fleet
from hastack.topology import Topology

# Bounds of the load (one client machine with 2 cores, a new TLS connection per request:
# the generator itself stays far from saturation below 100 req/s) and of one fault.
MAX_RATE = 100.0
MAX_FAULT_SECONDS = 120.0
WRITE_EVERY = 4  # one request in four is a write

EXPECTATIONS = ("all", "reads", "bounded")


@dataclass(frozen=True)
class Kind:
    suffix: str        # the fault's name is <machine>-<suffix>
    role: str          # machines with this role can have it ("": the stack, once)
    action: str        # kill | crash-db | power | link | deploy (ACTIONS)
    expect: str        # all | reads | bounded (module doc)
    detect: str        # vip | backend | monitor | none (module doc)
    unit: str = ""     # systemd unit, for kill
    net: str = ""      # public | private, for link
    monitor: str = ""  # PromQL that has a result once monitoring sees the fault ({m}: machine)


_DB_DOWN = 'up{job="mysqld",machine="{m}"} == 0 or mysql_up{machine="{m}"} == 0'

KINDS: tuple[Kind, ...] = (
    Kind("haproxy-killed", "loadbalancer", "kill", "bounded", "vip", unit="haproxy"),
    Kind("keepalived-killed", "loadbalancer", "kill", "bounded", "vip", unit="keepalived"),
    Kind("power-off", "loadbalancer", "power", "bounded", "vip"),
    Kind("link-cut", "loadbalancer", "link", "bounded", "vip", net="public"),
    Kind("nginx-killed", "web", "kill", "all", "backend", unit="nginx"),
    Kind("power-off", "web", "power", "all", "backend"),
    Kind("gunicorn-killed", "app", "kill", "all", "monitor", unit="foobar",
         monitor='up{job="site",machine="{m}"} == 0'),
    Kind("power-off", "app", "power", "all", "monitor",
         monitor='up{job="site",machine="{m}"} == 0'),
    Kind("power-off", "db-replica", "power", "reads", "monitor", monitor=_DB_DOWN),
    Kind("link-cut", "db-replica", "link", "reads", "monitor", net="private",
         monitor=_DB_DOWN),
    Kind("power-off", "monitoring", "power", "all", "monitor",
         monitor='up{job="prometheus",machine="{m}"} == 0'),
    Kind("mariadbd-killed", "db-primary", "crash-db", "reads", "monitor", unit="mariadb",
         monitor=_DB_DOWN),
    Kind("power-off", "db-primary", "power", "reads", "monitor", monitor=_DB_DOWN),
    Kind("rolling-deploy", "", "deploy", "all", "none"),
)


def _roll(fleet: Fleet, machine: str, kind: Kind) -> float:
    """Deploy a new build of the site; the time returned is the deploy's start."""
    t = time.monotonic()
    build = f"chaos-{int(time.time())}"
    fleet.roll_site_build(build, Console(file=io.StringIO(), width=120))
    return t

# action -> (inject, heal); each returns the monotonic time it took effect
Step = Callable[[Fleet, str, Kind], float]
ACTIONS: dict[str, tuple[Step, Step]] = {
    "kill": (lambda f, m, k: primitives.kill_service(f, m, k.unit),
             lambda f, m, k: primitives.start_service(f, m, k.unit)),
    "crash-db": (lambda f, m, k: primitives.crash_mariadbd(f, m),
                 lambda f, m, k: primitives.after_mariadbd_crash(f, m)),
    "power": (lambda f, m, k: primitives.power_off(f, m),  # type: ignore[arg-type]
              lambda f, m, k: primitives.power_on(f, m)),  # type: ignore[arg-type]
    "link": (lambda f, m, k: primitives.cut_link(m, k.net),
             lambda f, m, k: primitives.restore_link(m, k.net)),
    "deploy": (_roll, lambda f, m, k: time.monotonic()),  # nothing to heal
}
PHYSICAL = ("power", "link")  # need the lab's hands (Fleet.physical_faults)


@dataclass(frozen=True)
class Fault:
    name: str
    machine: str
    kind: Kind

    @property
    def expect(self) -> str:
        return self.kind.expect

    @property
    def physical(self) -> bool:
        return self.kind.action in PHYSICAL

    @property
    def monitor_query(self) -> str:
        return self.kind.monitor.replace("{m}", self.machine)

    def describe(self) -> str:
        if self.kind.action == "deploy":
            return "a new build of the site deployed, app servers reloaded one at a time"
        what = {"kill": f"{self.kind.unit} SIGKILLed", "crash-db": "mariadbd SIGKILLed",
                "power": "powered off (plug pulled)",
                "link": f"{self.kind.net} link cut"}[self.kind.action]
        return f"{self.machine}: {what}"

    def inject(self, fleet: Fleet) -> float:
        return ACTIONS[self.kind.action][0](fleet, self.machine, self.kind)

    def heal(self, fleet: Fleet) -> float:
        return ACTIONS[self.kind.action][1](fleet, self.machine, self.kind)


def catalog(topo: Topology) -> dict[str, Fault]:
    """Every fault of this topology, in KINDS order (tier by tier), by name. A machine with
    several roles gets a shared kind (power-off) once, with the weakest expectation."""
    found: dict[str, Fault] = {}
    for kind in KINDS:
        if not kind.role:
            found[kind.suffix] = Fault(kind.suffix, "", kind)
            continue
        for m in topo.with_role(kind.role):
            name = f"{m.name}-{kind.suffix}"
            old = found.get(name)
            if old is None or EXPECTATIONS.index(kind.expect) > EXPECTATIONS.index(old.expect):
                found[name] = Fault(name, m.name, kind)
    return found


def select(topo: Topology, names: Sequence[str] | None, physical: bool) -> list[Fault]:
    """The faults asked for (all of the catalog if none), or one clear error."""
    known = catalog(topo)
    usable = known if physical else {n: f for n, f in known.items() if not f.physical}
    if not names:
        return list(usable.values())
    chosen: list[Fault] = []
    for raw in names:
        name = raw.strip()
        if name not in known:
            raise HastackError(_unknown(topo, name, known))
        if name not in usable:
            raise HastackError(f"fault '{name}' pulls a plug or a cable, which only the lab "
                               "can do; on servers use daemon faults (-killed)")
        if known[name] in chosen:
            raise HastackError(f"fault '{name}' is listed twice")
        chosen.append(known[name])
    return chosen


def _unknown(topo: Topology, name: str, known: dict[str, Fault]) -> str:
    suffixes = sorted({k.suffix for k in KINDS})
    for suffix in suffixes:
        if name.endswith("-" + suffix):
            machine = name[: -len(suffix) - 1]
            names = [m.name for m in topo.machines]
            if machine not in names:
                return (f"unknown machine '{machine}' in fault '{name}'; machines: "
                        f"{', '.join(names)}")
            roles = ", ".join(topo.machine(machine).roles)
            return f"{machine} ({roles}) has no fault '{suffix}'; its faults: " + (
                ", ".join(n for n, f in known.items() if f.machine == machine) or "none")
    return (f"unknown fault '{name}'; faults are <machine>-<kind> with kind one of "
            f"{', '.join(suffixes)} (e.g. {next(iter(known), 'web1-nginx-killed')})")


def check_load(rate: float, fault_seconds: float) -> None:
    """The load and the fault stay within their bounds, or one clear error."""
    if not 0 < rate <= MAX_RATE:
        raise HastackError(f"--rate must be above 0 and at most {MAX_RATE:g} requests/s "
                           f"(the bounded maximum), not {rate:g}")
    if not 1 <= fault_seconds <= MAX_FAULT_SECONDS:
        raise HastackError(f"--fault-seconds must be within 1..{MAX_FAULT_SECONDS:g}, "
                           f"not {fault_seconds:g}")
