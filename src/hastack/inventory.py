"""Topology -> Ansible inventory: the single mapping from our model to the playbook.

Real servers skip this module: their users write an inventory with the same groups and host
variables (see docs/real-servers.md), and the same playbook deploys both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from hastack.errors import HastackError
from hastack.lab.machine import PRIVATE_IF, PUBLIC_IF
from hastack.topology import ROLE_GROUPS, Topology

GROUPS = ROLE_GROUPS  # topology role -> Ansible group (topology.from_inventory reads them back)


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
        "hastack_debug_headers": topo.debug_headers,
    }
    variables.update(connection or {})
    return {"all": {"vars": variables, "hosts": hosts, "children": children}}


REQUIRED_GROUPS = ("loadbalancer", "web", "app", "db_primary")
REQUIRED_VARS = ("hastack_domain", "hastack_vips", "hastack_public_net", "hastack_private_net",
                 "hastack_admin_address")


def secrets_dir(inventory: Path) -> Path:
    """Where an inventory's environment keeps its generated secrets (CA, passwords) by default:
    next to the inventory, one directory per inventory file."""
    return inventory.resolve().parent / ".hastack-secrets" / inventory.stem


def _has_var_dirs(path: Path) -> bool:
    """group_vars/ or host_vars/ beside the inventory: Ansible adds their variables, so the
    file alone does not show them (topology.from_listing checks what Ansible resolves)."""
    return any((path.parent / d).is_dir() for d in ("group_vars", "host_vars"))


def check_file(path: Path) -> None:
    """Catch a user's inventory mistakes before Ansible connects anywhere.

    Only YAML inventories are read (an INI or dynamic inventory is passed to Ansible as is);
    variables are checked here only when no group_vars/host_vars directory may add them.
    """
    if not path.exists():
        raise HastackError(f"{path}: no such inventory file")
    if path.suffix not in (".yml", ".yaml"):
        return
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise HastackError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    root = data.get("all") if isinstance(data, dict) else None
    if not isinstance(root, dict):
        raise HastackError(f"{path}: expected a top-level 'all:' with hosts, vars and children")
    hosts = root.get("hosts") or {}
    children = root.get("children") or {}
    variables = root.get("vars") or {}
    for group in REQUIRED_GROUPS:
        if not (children.get(group) or {}).get("hosts"):
            raise HastackError(f"{path}: group '{group}' has no hosts; every stack needs "
                               f"{', '.join(REQUIRED_GROUPS)} (see examples/servers.yml)")
    # a host's variables: under all.hosts, or under the group that lists it
    hostvars: dict[str, dict[str, Any]] = {}
    for body in children.values():
        for name, entry in ((body or {}).get("hosts") or {}).items():
            if entry:
                hostvars.setdefault(name, {}).update(entry)
    for name, entry in hosts.items():
        hostvars.setdefault(name, {}).update(entry or {})
    for group, body in children.items():
        for name in (body or {}).get("hosts") or {}:
            if name not in hostvars:
                raise HastackError(f"{path}: host '{name}' of group '{group}' is not under "
                                   "all.hosts; define it there with its addresses")
    if _has_var_dirs(path):
        return
    for name, hv in hostvars.items():
        for key in ("ansible_host", "hastack_private_address", "hastack_private_interface"):
            if key not in hv:
                raise HastackError(f"{path}: all.hosts.{name}.{key} is missing")
    lbs = list(children["loadbalancer"].get("hosts") or {})
    for name in lbs + list((children.get("dns") or {}).get("hosts") or {}):
        for key in ("hastack_public_address", "hastack_public_interface"):
            if key not in hostvars[name]:
                raise HastackError(f"{path}: all.hosts.{name}.{key} is missing (load "
                                   "balancers and DNS sit on the public net)")
    for key in REQUIRED_VARS:
        if key not in variables:
            raise HastackError(f"{path}: all.vars.{key} is missing")
    vips = variables["hastack_vips"]
    if not isinstance(vips, list) or len(vips) != len(lbs):
        raise HastackError(f"{path}: all.vars.hastack_vips must list one VIP (address, vrid) "
                           f"per load balancer: {len(lbs)} load balancers")
    vrids = [v.get("vrid") for v in vips if isinstance(v, dict)]
    if len(set(vrids)) != len(vips) or None in vrids:
        raise HastackError(f"{path}: all.vars.hastack_vips: each VIP needs its own vrid")

