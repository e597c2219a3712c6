"""Inventory -> Topology: the model of servers someone else made, from either shape an
inventory reaches hastack in (the YAML inventory.build() writes, ansible-inventory's JSON)."""

from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address
from pathlib import Path

import pytest
import yaml

from hastack import deploy, inventory, topology
from hastack.errors import HastackError

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "servers.yml"

TOPOLOGIES = [
    {},
    {"counts": {"loadbalancers": 1, "web": 3, "replicas": 0, "dns": 0, "monitoring": 0}},
    {"counts": {"replicas": 3, "monitoring": 2}, "site": {"debug_headers": True,
                                                           "aliases": []}},
    {"site": {"domain": "shop.example"}, "networks": {"public": "198.18.4.0/24",
                                                       "private": "198.19.8.0/22"},
     "machines": [
         {"name": "edge", "roles": ["loadbalancer", "dns"], "private_address": "198.19.8.5",
          "public_address": "198.18.4.5"},
         {"name": "www1", "roles": ["web", "app", "db-primary"],
          "private_address": "198.19.9.21"},
         {"name": "dbr", "roles": ["db-replica", "monitoring"],
          "private_address": "198.19.9.22", "public_address": "198.18.4.22"},
         {"name": "votes", "roles": ["quorum"], "private_address": "198.19.9.23"},
     ],
     "vips": [{"address": "198.18.4.200", "vrid": 9}]},
]


@pytest.mark.parametrize("data", TOPOLOGIES)
def test_a_built_inventory_reads_back_as_its_topology(data):
    t = topology.parse(data)
    again = topology.from_inventory(inventory.build(t), "servers.yml")
    assert again.source == "servers.yml"
    assert dataclasses.replace(again, source=t.source) == t
    assert again.admin_address is None and again.host_private == t.host_private


def test_connection_variables_do_not_change_the_model():
    t = topology.parse({})
    built = inventory.build(t, {"ansible_user": "root", "ansible_port": 2222})
    assert dataclasses.replace(topology.from_inventory(built, "x"), source=t.source) == t


def test_real_servers_keep_their_own_addresses():
    t = topology.from_inventory(yaml.safe_load(EXAMPLE.read_text()), str(EXAMPLE))
    assert [m.name for m in t.machines] == ["lb1", "lb2", "web1", "web2", "app1", "app2",
                                            "db1", "db2", "qd1"]
    assert t.machine("lb1").addresses == ["192.0.2.11", "198.51.100.11"]
    assert t.machine("db2").roles == ("db-replica",)
    assert [str(v.address) for v in t.vips] == ["192.0.2.100", "192.0.2.101"]
    assert str(t.public_net) == "192.0.2.0/24" and str(t.private_net) == "198.51.100.0/24"
    assert t.domain == "www.foobar.com" and t.aliases == ("foobar.com",)


def test_the_admin_address_comes_from_the_inventory():
    data = yaml.safe_load(EXAMPLE.read_text())
    data["all"]["vars"]["hastack_admin_address"] = "198.51.100.250"
    t = topology.from_inventory(data, "servers.yml")
    assert t.admin_address == IPv4Address("198.51.100.250") == t.host_private
    assert inventory.build(t)["all"]["vars"]["hastack_admin_address"] == "198.51.100.250"
    assert topology.from_inventory(inventory.build(t), "servers.yml") == t


def test_hosts_defined_in_their_group_and_hosts_without_a_role():
    data = yaml.safe_load(EXAMPLE.read_text())
    hosts = data["all"]["hosts"]
    data["all"]["children"]["web"]["hosts"]["web1"] = hosts.pop("web1")
    hosts["bastion"] = {"ansible_host": "198.51.100.5"}  # in the inventory, not in the stack
    t = topology.from_inventory(data, "servers.yml")
    assert str(t.machine("web1").private_address) == "198.51.100.21"
    assert "bastion" not in [m.name for m in t.machines]


def _example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def _set(path: str, value):
    def edit(d):
        *parents, last = path.split(".")
        for p in parents:
            d = d[p]
        if value is None:
            d.pop(last)
        else:
            d[last] = value
    return edit


@pytest.mark.parametrize(("edit", "message"), [
    (_set("all.hosts.web1.hastack_private_address", None),
     "all.hosts.web1.hastack_private_address: is missing"),
    (_set("all.hosts.web1.hastack_private_address", "not-an-ip"),
     "all.hosts.web1.hastack_private_address: 'not-an-ip' is not an IPv4 address"),
    (_set("all.hosts.app2.hastack_private_address", "2001:db8::2"),
     "all.hosts.app2.hastack_private_address: '2001:db8::2' is not an IPv4 address"),
    (_set("all.hosts.lb2.hastack_public_address", None),
     "all.hosts.lb2.hastack_public_address: is missing (load balancers and DNS sit on the "
     "public net)"),
    (_set("all.hosts.app2.hastack_private_address", "198.51.100.31"),
     "all.hosts.app2: address 198.51.100.31 is already used by app1"),
    (_set("all.children.app", None),
     "all.children.app: has no hosts; every stack needs loadbalancer, web, app, db_primary"),
    (_set("all.children.db_primary.hosts", {"db1": {}, "db2": {}}),
     "all.hosts.db2: is in both db_primary and db_replica"),
    (lambda d: d["all"]["children"]["db_replica"]["hosts"].pop("db2")
     or d["all"]["children"]["db_primary"]["hosts"].update(db2={}),
     "all.children: exactly one db-primary is allowed, found db1, db2"),
    (_set("all.vars.hastack_domain", None), "all.vars.hastack_domain: is missing"),
    (_set("all.vars.hastack_admin_address", None), "all.vars.hastack_admin_address: is missing"),
    (_set("all.vars.hastack_private_net", "198.51.100.7/24"),
     "all.vars.hastack_private_net: '198.51.100.7/24' is not a network like"),
    (_set("all.vars.hastack_debug_headers", "yes"),
     "all.vars.hastack_debug_headers: must be true or false"),
    (_set("all.vars.hastack_aliases", "foobar.com"),
     "all.vars.hastack_aliases: must be a list of domain names"),
    (_set("all.vars.hastack_vips", [{"address": "192.0.2.100", "vrid": 51}]),
     "all.vars.hastack_vips: must list one VIP (address, vrid) per load balancer: 2"),
    (_set("all.vars.hastack_vips", [{"address": "192.0.2.100", "vrid": 51},
                                    {"address": "192.0.2.101", "vrid": 51}]),
     "all.vars.hastack_vips[1].vrid: duplicate virtual router id 51"),
    (_set("all.vars.hastack_vips", [{"address": "192.0.2.100", "vrid": 51},
                                    {"address": "192.0.2.11", "vrid": 52}]),
     "all.vars.hastack_vips[1].address: 192.0.2.11 is the address of machine lb1"),
    (_set("all.vars.hastack_vips", [{"address": "192.0.2.100", "vrid": 51},
                                    {"address": "192.0.2.101"}]),
     "all.vars.hastack_vips[1].vrid: must be an integer from 1 to 255"),
    (_set("all.hosts", ["lb1"]), "all.hosts: must be a mapping of host names"),
    (_set("all.hosts.web2", "198.51.100.22"), "all.hosts.web2: must be a mapping of variables"),
])
def test_inventory_mistakes_are_one_line_naming_file_and_key(edit, message):
    data = _example()
    edit(data)
    with pytest.raises(HastackError) as caught:
        topology.from_inventory(data, "servers.yml")
    text = str(caught.value)
    assert text.startswith(f"servers.yml: {message}"), text
    assert "\n" not in text


@pytest.mark.parametrize("data", [None, [], {"web": {"hosts": {}}}, {"all": "x"}])
def test_not_an_inventory(data):
    with pytest.raises(HastackError, match=r"^inv.yml: all: expected a top-level 'all:'"):
        topology.from_inventory(data, "inv.yml")


# ---- ansible-inventory --list: the same model from Ansible's resolved view ----------------

def listing_of(data: dict) -> dict:
    """What `ansible-inventory --list` prints for an inventory.build()-shaped inventory:
    variables merged into each host, groups with sorted hosts and children lists."""
    root = data["all"]
    hostvars = {name: {**root["vars"], **(hv or {})}
                for name, hv in sorted(root["hosts"].items())}
    listing = {"_meta": {"hostvars": hostvars},
               "all": {"children": ["ungrouped", *root["children"]]}}
    for group, body in root["children"].items():
        entry = {}
        if body.get("hosts"):
            entry["hosts"] = sorted(body["hosts"])
        if body.get("children"):
            entry["children"] = list(body["children"])
        listing[group] = entry
    return listing


@pytest.mark.parametrize("data", TOPOLOGIES)
def test_a_listing_reads_as_the_same_topology(data):
    t = topology.parse(data)
    built = inventory.build(t, {"ansible_user": "root"})
    from_listing = topology.from_listing(listing_of(built), "servers.yml")
    from_yaml = topology.from_inventory(built, "servers.yml")
    by_name = sorted(from_yaml.machines, key=lambda m: m.name)
    assert sorted(from_listing.machines, key=lambda m: m.name) == by_name
    assert dataclasses.replace(from_listing, machines=from_yaml.machines) == from_yaml


def test_site_variables_must_agree_on_every_host():
    listing = listing_of(inventory.build(topology.parse({})))
    listing["_meta"]["hostvars"]["web2"]["hastack_domain"] = "other.example"
    with pytest.raises(HastackError, match=r"^servers.yml: all.vars.hastack_domain: hosts "
                                           r"disagree \(.*web2.*\)"):
        topology.from_listing(listing, "servers.yml")


def test_listing_mistakes_name_the_host_and_variable():
    listing = listing_of(inventory.build(topology.parse({})))
    del listing["_meta"]["hostvars"]["db2"]["hastack_private_address"]
    with pytest.raises(HastackError, match=r"^servers.yml: all.hosts.db2."
                                           r"hastack_private_address: is missing$"):
        topology.from_listing(listing, "servers.yml")


def test_group_vars_are_resolved_by_ansible_inventory(tmp_path: Path):
    """Variables in group_vars/ and hosts defined only in their groups: the real
    ansible-inventory resolves them, and the model is the same as from one YAML file."""
    data = _example()
    site_vars = data["all"].pop("vars")
    hosts = data["all"].pop("hosts")
    for body in data["all"]["children"].values():
        for name in body.get("hosts") or {}:
            body["hosts"][name] = hosts[name]
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all.yml").write_text(yaml.safe_dump(site_vars))
    path = tmp_path / "servers.yml"
    path.write_text(yaml.safe_dump(data))
    inventory.check_file(path)  # group_vars beside it: the file alone need not have them
    resolved = topology.from_listing(deploy.list_inventory(path), str(path))
    expected = topology.from_inventory(_example(), str(path))
    assert sorted(resolved.machines, key=lambda m: m.name) == sorted(
        expected.machines, key=lambda m: m.name)
    assert dataclasses.replace(resolved, machines=expected.machines) == expected

