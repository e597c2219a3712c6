"""TEMP(from_inventory): a minimal stand-in for `hastack.topology.from_inventory`, which
branch `fleet` is writing with the same signature. Drop this file (and the fallback import
marked TEMP(from_inventory)) once that lands in main.

Reads the shape `hastack.inventory.build()` returns ({"all": {"vars", "hosts", "children"}})
without the lab's address checks: real servers' addresses need not be in 198.18.0.0/15.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from hastack.errors import HastackError
from hastack.topology import ROLES, Machine, Topology, Vip

# Ansible group -> topology role (the inverse of hastack.inventory.GROUPS)
_ROLE_OF_GROUP = {"loadbalancer": "loadbalancer", "dns": "dns", "web": "web", "app": "app",
                  "db_primary": "db-primary", "db_replica": "db-replica",
                  "monitoring": "monitoring"}


def from_inventory(data: dict[str, Any], source: str) -> Topology:
    try:
        root = data["all"]
        variables = root.get("vars") or {}
        children = root.get("children") or {}
        roles: dict[str, list[str]] = {}
        for group, role in _ROLE_OF_GROUP.items():
            for name in ((children.get(group) or {}).get("hosts") or {}):
                roles.setdefault(name, []).append(role)
        machines = []
        for name, hv in (root.get("hosts") or {}).items():
            hv = hv or {}
            public = hv.get("hastack_public_address")
            machines.append(Machine(
                name, tuple(sorted(roles.get(name, []), key=ROLES.index)),
                ipaddress.IPv4Address(hv["hastack_private_address"]),
                ipaddress.IPv4Address(public) if public else None))
        vips = tuple(Vip(ipaddress.IPv4Address(v["address"]), int(v["vrid"]))
                     for v in variables.get("hastack_vips") or [])
        return Topology(
            domain=variables["hastack_domain"],
            aliases=tuple(variables.get("hastack_aliases") or ()),
            public_net=ipaddress.IPv4Network(variables["hastack_public_net"]),
            private_net=ipaddress.IPv4Network(variables["hastack_private_net"]),
            machines=tuple(machines), vips=vips, source=source)
    except (KeyError, TypeError, ValueError) as exc:
        raise HastackError(f"{source}: not an inventory hastack can read "
                           f"({type(exc).__name__}: {exc})") from None
