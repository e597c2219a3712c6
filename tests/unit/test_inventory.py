"""Topology -> Ansible inventory: groups and variables the roles rely on."""

from pathlib import Path

import pytest
import yaml

from hastack import inventory, topology
from hastack.errors import HastackError


def test_groups_follow_roles():
    inv = inventory.build(topology.parse({}))
    children = inv["all"]["children"]
    assert list(children["loadbalancer"]["hosts"]) == ["lb1", "lb2"]
    assert list(children["web"]["hosts"]) == ["web1", "web2"]
    assert list(children["app"]["hosts"]) == ["app1", "app2"]
    assert list(children["db_primary"]["hosts"]) == ["db1"]
    assert list(children["db_replica"]["hosts"]) == ["db2"]
    assert set(children["database"]["children"]) == {"db_primary", "db_replica"}
    assert list(children["dns"]["hosts"]) == ["ns1"]
    assert list(children["monitoring"]["hosts"]) == ["mon1"]


def test_host_variables_carry_addresses_and_interfaces():
    inv = inventory.build(topology.parse({}))
    lb1 = inv["all"]["hosts"]["lb1"]
    assert lb1["ansible_host"] == "198.19.0.11"
    assert lb1["hastack_public_address"] == "198.18.0.11"
    assert lb1["hastack_public_interface"] == "pub"
    assert lb1["hastack_private_interface"] == "priv"
    web1 = inv["all"]["hosts"]["web1"]
    assert "hastack_public_address" not in web1


def test_site_variables_and_connection():
    inv = inventory.build(topology.parse({}), {"ansible_user": "root"})
    v = inv["all"]["vars"]
    assert v["hastack_domain"] == "www.foobar.com"
    assert v["hastack_vips"] == [{"address": "198.18.0.100", "vrid": 51},
                                 {"address": "198.18.0.101", "vrid": 52}]
    assert v["hastack_admin_address"] == "198.19.0.1"
    assert v["ansible_user"] == "root"


def test_no_replica_group_without_replicas():
    inv = inventory.build(topology.parse({"counts": {"replicas": 0}}))
    children = inv["all"]["children"]
    assert "db_replica" not in children
    assert set(children["database"]["children"]) == {"db_primary"}


EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "servers.yml"


def test_example_inventory_passes_the_check():
    inventory.check_file(EXAMPLE)


@pytest.mark.parametrize(("edit", "message"), [
    (lambda d: d["all"]["children"].pop("app"), r"group 'app' has no hosts"),
    (lambda d: d["all"]["hosts"]["web1"].pop("hastack_private_address"),
     r"all.hosts.web1.hastack_private_address is missing"),
    (lambda d: d["all"]["hosts"]["lb2"].pop("hastack_public_interface"),
     r"all.hosts.lb2.hastack_public_interface is missing"),
    (lambda d: d["all"]["vars"]["hastack_vips"].pop(), r"one VIP \(address, vrid\) per load"),
    (lambda d: d["all"]["vars"]["hastack_vips"][1].update(vrid=51), r"its own vrid"),
    (lambda d: d["all"]["vars"].pop("hastack_domain"), r"all.vars.hastack_domain is missing"),
    (lambda d: d["all"]["hosts"].pop("db2"), r"host 'db2' of group 'db_replica'|db2"),
])
def test_inventory_mistakes_are_named(tmp_path, edit, message):
    data = yaml.safe_load(EXAMPLE.read_text())
    edit(data)
    f = tmp_path / "servers.yml"
    f.write_text(yaml.safe_dump(data))
    with pytest.raises(HastackError, match=message):
        inventory.check_file(f)


def test_inventory_that_is_not_yaml(tmp_path):
    f = tmp_path / "bad.yml"
    f.write_text("all: [unclosed")
    with pytest.raises(HastackError, match=r"bad.yml: not valid YAML"):
        inventory.check_file(f)
