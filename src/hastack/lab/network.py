"""The lab's bridges on the host, through netlink (pyroute2).

Two bridges: the public net (the "internet" side, where the host is the client) and the private
net (where the host is the admin bastion). Forwarding is switched off on both, so nothing is
routed between them or to anything outside: machines reach only their own bridges.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import time
from pathlib import Path

from hastack.errors import HastackError
from hastack.topology import LAB_SPACE, Topology

PREFIX = "hs-"
PUBLIC_BRIDGE = "hs-pub"
PRIVATE_BRIDGE = "hs-priv"


def _netlink():
    """A netlink socket (pyroute2's IPRoute), imported when first needed: pyroute2 takes
    0.4 s to import, which every `hastack` command would pay (`hastack ssh` included)."""
    from pyroute2 import IPRoute

    return IPRoute()


def bridges(topo: Topology) -> list[tuple[str, str]]:
    """(bridge name, host address with prefix) for each lab network."""
    return [
        (PUBLIC_BRIDGE, f"{topo.host_public}/{topo.public_net.prefixlen}"),
        (PRIVATE_BRIDGE, f"{topo.host_private}/{topo.private_net.prefixlen}"),
    ]


def bridge_mac(name: str) -> str:
    """The bridge's own MAC, fixed: without one a bridge takes the lowest MAC of its ports, so
    powering that machine off changes the host's MAC and every ARP entry for it goes stale.

    Locally administered unicast (02:...), derived from the name: the same on every run.
    """
    digest = hashlib.sha256(name.encode()).digest()
    return ":".join(f"{b:02x}" for b in (0x02, *digest[:5]))


def _set_sysctl(path: str, value: str) -> None:
    p = Path("/proc/sys") / path
    if p.exists():
        p.write_text(value)


def check_conflicts(topo: Topology, owned: set[str]) -> None:
    """Refuse to start when something not ours already uses the lab's names or addresses."""
    with _netlink() as ipr:
        names = {link.get_attr("IFLA_IFNAME"): link["index"] for link in ipr.get_links()}
        for name, _ in bridges(topo):
            if name in names and name not in owned:
                raise HastackError(
                    f"network device {name} already exists and was not created by this lab; "
                    f"remove it (ip link del {name}) or run 'hastack down' if it is a leftover")
        by_index = {i: n for n, i in names.items()}
        for addr in ipr.get_addr(family=2):
            ip = ipaddress.ip_address(addr.get_attr("IFA_ADDRESS"))
            dev = by_index.get(addr["index"], "?")
            if ip in LAB_SPACE and not dev.startswith(PREFIX):
                raise HastackError(
                    f"address {ip} on {dev} is inside the lab's range {LAB_SPACE}; "
                    "remove it or the lab's routes would clash")


def ensure_bridges(topo: Topology) -> None:
    with _netlink() as ipr:
        for name, cidr in bridges(topo):
            mac = bridge_mac(name)
            if not ipr.link_lookup(ifname=name):
                ipr.link("add", ifname=name, kind="bridge", address=mac)
            index = ipr.link_lookup(ifname=name)[0]
            _set_sysctl(f"net/ipv6/conf/{name}/disable_ipv6", "1")
            _set_sysctl(f"net/ipv4/conf/{name}/forwarding", "0")
            # A MAC change (below, on a bridge made before MACs were fixed) is announced by
            # gratuitous ARP, so the machines do not keep the old one.
            _set_sysctl(f"net/ipv4/conf/{name}/arp_notify", "1")
            address, prefix = cidr.split("/")
            found = {a.get_attr("IFA_ADDRESS"): a["prefixlen"]
                     for a in ipr.get_addr(index=index, family=2)}
            # A network address of another plan goes; a single host address stays: tests and
            # benchmarks add /32s as extra outside clients, and may be using them right now.
            for other, length in found.items():
                if other != address and length != 32:
                    ipr.addr("del", index=index, address=other, prefixlen=length)
            if address not in found:
                ipr.addr("add", index=index, address=address, prefixlen=int(prefix))
            if ipr.get_links(index)[0].get_attr("IFLA_ADDRESS") != mac:
                ipr.link("set", index=index, address=mac)
            ipr.link("set", index=index, state="up")


def attach(ifname: str, bridge: str, timeout: float = 15.0) -> None:
    """Put a machine's host-side veth into a bridge once nspawn has created it."""
    deadline = time.monotonic() + timeout
    with _netlink() as ipr:
        while True:
            found = ipr.link_lookup(ifname=ifname)
            if found:
                break
            if time.monotonic() > deadline:
                raise HastackError(f"interface {ifname} did not appear within {timeout:.0f} s; "
                                   "see the machine's console log")
            time.sleep(0.05)
        master = ipr.link_lookup(ifname=bridge)[0]
        _set_sysctl(f"net/ipv6/conf/{ifname}/disable_ipv6", "1")  # lab speaks IPv4 only
        ipr.link("set", index=found[0], master=master, state="up")


def set_links(names: list[str], up: bool) -> tuple[float, float] | None:
    """Switch devices on or off together (a machine's cables in or out); return the moments
    just before the first and just after the last was switched, or None if none exists."""
    with _netlink() as ipr:
        found = [i for name in names for i in ipr.link_lookup(ifname=name)]
        if not found:
            return None
        t = time.monotonic()
        for index in found:
            ipr.link("set", index=index, state="up" if up else "down")
        return t, time.monotonic()


def lab_links() -> list[str]:
    with _netlink() as ipr:
        return [n for n in (link.get_attr("IFLA_IFNAME") for link in ipr.get_links())
                if n.startswith(PREFIX)]


def remove_link(name: str) -> None:
    """Delete one device if it exists (a veth whose machine is gone, say)."""
    with _netlink() as ipr:
        for index in ipr.link_lookup(ifname=name):
            with contextlib.suppress(Exception):
                ipr.link("del", index=index)


def remove_links() -> None:
    """Delete every hs-* device (bridges, and veths left by a crash)."""
    with _netlink() as ipr:
        for name in lab_links():
            for index in ipr.link_lookup(ifname=name):
                # a veth may already be gone with its peer
                with contextlib.suppress(Exception):
                    ipr.link("del", index=index)
