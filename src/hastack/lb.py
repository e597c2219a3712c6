"""Take a web server out of rotation and back, on every load balancer at once.

Uses HAProxy's runtime API (the admin socket on each LB): `drain` stops new requests to the
server while the ones in flight finish; `enable` puts it back. The building block of a
rolling deploy: drain, wait until idle, change, enable.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import time

import httpx

from hastack.errors import HastackError
from hastack.fleet import Fleet

BACKEND = "web"
SOCKET = "/run/haproxy/admin.sock"
STATS_PORT = 8404  # loadbalancer_stats_port in the role's defaults


def _api(fleet: Fleet, lb: str, command: str) -> str:
    return fleet.run_checked(lb, f"socat stdio {SOCKET}", "HAProxy runtime API",
                           stdin=command + "\n")


def _lbs_and_check(fleet: Fleet, server: str) -> list[str]:
    topo = fleet.require_topology()
    webs = [m.name for m in topo.with_role("web")]
    if server not in webs:
        raise HastackError(f"'{server}' is not a web server of this site; web servers: "
                           f"{', '.join(webs)}")
    return [m.name for m in topo.with_role("loadbalancer")]


def server_stats(fleet: Fleet, lb: str) -> dict[str, dict[str, str]]:
    """HAProxy's statistics for the web backend's servers, by server name.

    Read from the stats page on the LB's private address (the host is the admin bastion):
    a plain HTTP GET, fast enough to poll while faults are injected.
    """
    address = fleet.require_topology().machine(lb).private_address
    try:
        response = httpx.get(f"http://{address}:{STATS_PORT}/stats;csv", timeout=2.0)
        response.raise_for_status()
    except httpx.HTTPError as exc:
        raise HastackError(f"{lb}: HAProxy stats page unreachable: {exc}") from None
    text = response.text.lstrip("# ")
    rows = csv.DictReader(io.StringIO(text))
    return {r["svname"]: r for r in rows if r["pxname"] == BACKEND
            and r["svname"] not in ("FRONTEND", "BACKEND")}


def set_state(fleet: Fleet, server: str, state: str) -> list[str]:
    lbs = _lbs_and_check(fleet, server)
    for lb in lbs:
        out = _api(fleet, lb, f"set server {BACKEND}/{server} state {state}").strip()
        if out:
            raise HastackError(f"{lb}: HAProxy refused 'set server {BACKEND}/{server} state "
                               f"{state}': {out}")
    return lbs


def drain(fleet: Fleet, server: str, wait: float = 30.0) -> float:
    """Drain on every LB, then wait until none has a request in flight to it; seconds taken."""
    started = time.monotonic()
    lbs = set_state(fleet, server, "drain")
    deadline = started + wait
    while True:
        busy = [lb for lb in lbs if int(server_stats(fleet, lb)[server]["scur"] or 0) > 0]
        if not busy:
            return time.monotonic() - started
        if time.monotonic() > deadline:
            raise HastackError(f"{server} still has requests in flight on {', '.join(busy)} "
                               f"after {wait:.0f} s (drain is set; they will finish)")
        time.sleep(0.2)


def enable(fleet: Fleet, server: str) -> None:
    set_state(fleet, server, "ready")


def _lbs(fleet: Fleet) -> list[str]:
    return [m.name for m in fleet.require_topology().with_role("loadbalancer")]


def _client_address(address: str) -> str:
    try:
        return str(ipaddress.IPv4Address(address))
    except ValueError:
        raise HastackError(f"'{address}' is not an IPv4 client address") from None


def bans(fleet: Fleet) -> dict[str, list[str]]:
    """Client addresses banned at the edge, as each LB's copy of the shared table has them."""
    return {lb: fleet.run_checked(lb, "hastack-ban list", "listing bans").split()
            for lb in _lbs(fleet)}


def unban(fleet: Fleet, address: str) -> None:
    """Lift a ban everywhere: each LB's fail2ban forgets it (no re-ban from its memory of
    the client), and the shared table entry is cleared (reaches every LB through peers)."""
    address = _client_address(address)
    for lb in _lbs(fleet):
        fleet.run_checked(lb, f"fail2ban-client unban {address} >/dev/null; "
                            f"hastack-ban unban {address}", f"unbanning {address}")
