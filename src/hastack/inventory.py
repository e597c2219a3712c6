"""Topology -> Ansible inventory: the single mapping from our model to the playbook.

Real servers skip this module: their users write an inventory with the same groups and host
variables (see docs/real-servers.md), and the same playbook deploys both.
"""

from __future__ import annotations

from typing import Any

from hastack.lab.machine import PRIVATE_IF, PUBLIC_IF
from hastack.topology import Topology

# topology role -> Ansible group
GROUPS = {
    "loadbalancer": "loadbalancer",
    "dns": "dns",
    "web": "web",
    "app": "app",
    "db-primary": "db_primary",
    "db-replica": "db_replica",
    "monitoring": "monitoring",
}


def build(topo: Topology, connection: dict[str, Any] | None = None) -> dict[str, Any]:
    hosts: dict[str, Any] = {}
    for m in topo.machines:
        hv: dict[str, Any] = {
            "ansible_host": str(m.private_address),
            "hastack_private_address": str(m.private_address),
            "hastack_private_interface": PRIVATE_IF,
        }
        if m.public_address is not None:
            hv["hastack_public_address"] = str(m.public_address)
            hv["hastack_public_interface"] = PUBLIC_IF
        hosts[m.name] = hv
    children: dict[str, Any] = {}
    for role, group in GROUPS.items():
        members = [m.name for m in topo.with_role(role)]
        if members:
            children[group] = {"hosts": {name: {} for name in members}}
    children["database"] = {"children": {g: {} for g in ("db_primary", "db_replica")
                                         if g in children}}
    variables: dict[str, Any] = {
        "hastack_environment": "lab",
        "hastack_domain": topo.domain,
        "hastack_aliases": list(topo.aliases),
        "hastack_vips": [{"address": str(v.address), "vrid": v.vrid} for v in topo.vips],
        "hastack_public_net": str(topo.public_net),
        "hastack_private_net": str(topo.private_net),
        "hastack_admin_address": str(topo.host_private),
    }
    variables.update(connection or {})
    return {"all": {"vars": variables, "hosts": hosts, "children": children}}
