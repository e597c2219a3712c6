"""The topology model: the seed's defaults and every validation error."""

from pathlib import Path

import pytest

from hastack import topology
from hastack.errors import HastackError


def test_defaults_are_the_seed():
    t = topology.parse({})
    names = [m.name for m in t.machines]
    assert names == ["lb1", "lb2", "web1", "web2", "app1", "app2", "db1", "db2", "ns1", "mon1"]
    assert [str(v.address) for v in t.vips] == ["198.18.0.100", "198.18.0.101"]
    assert [v.vrid for v in t.vips] == [51, 52]
    assert t.machine("db1").roles == ("db-primary",)
    assert t.machine("db2").roles == ("db-replica",)
    # the database's backups and its cluster's third quorum vote live on the first
    # monitoring machine, not on a DB node
    assert t.machine("mon1").roles == ("monitoring", "backup", "quorum")
    assert str(t.machine("lb1").public_address) == "198.18.0.11"
    assert str(t.machine("lb1").private_address) == "198.19.0.11"
    assert t.machine("web1").public_address is None
    assert str(t.host_public) == "198.18.0.1" and str(t.host_private) == "198.19.0.1"
    assert t.domain == "www.foobar.com"


def test_counts_change_the_machine_list():
    t = topology.parse({"counts": {"loadbalancers": 1, "web": 3, "replicas": 0, "dns": 0}})
    assert [m.name for m in t.with_role("web")] == ["web1", "web2", "web3"]
    assert t.with_role("db-replica") == [] and t.with_role("dns") == []
    assert len(t.vips) == 1


@pytest.mark.parametrize("count", [0, 1, 2])
def test_monitoring_count_and_its_public_leg(count):
    # without a monitoring machine, no third quorum vote: no replica either
    t = topology.parse({"counts": {"monitoring": count, "replicas": 1 if count else 0}})
    mons = t.with_role("monitoring")
    assert [m.name for m in mons] == [f"mon{i + 1}" for i in range(count)]
    for i, m in enumerate(mons):
        # blackbox probes the VIPs and the name server from the public net, as a client would
        assert str(m.private_address) == f"198.19.0.{61 + i}"
        assert str(m.public_address) == f"198.18.0.{61 + i}"


def test_the_backup_role_goes_with_the_first_monitoring_machine():
    two = topology.parse({"counts": {"monitoring": 2}})
    assert [m.name for m in two.with_role("backup")] == ["mon1"]
    assert two.machine("mon2").roles == ("monitoring",)
    assert topology.parse({"counts": {"monitoring": 0, "replicas": 0}}).with_role("backup") == []


def test_the_quorum_vote_goes_with_the_first_monitoring_machine_when_there_are_replicas():
    two = topology.parse({"counts": {"monitoring": 2, "replicas": 2}})
    assert [m.name for m in two.with_role("quorum")] == ["mon1"]
    # no replica, no failover cluster: nothing to vote on
    alone = topology.parse({"counts": {"replicas": 0}})
    assert alone.with_role("quorum") == [] and alone.machine("mon1").roles == ("monitoring",
                                                                               "backup")
    # two replicas are three votes on their own
    assert topology.parse({"counts": {"monitoring": 0, "replicas": 2}}).with_role("quorum") == []


def test_roles_can_share_a_machine():
    t = topology.parse({"machines": [
        {"name": "lb1", "roles": ["loadbalancer"], "private_address": "198.19.0.11",
         "public_address": "198.18.0.11"},
        {"name": "www1", "roles": ["web", "app", "db-primary"], "private_address": "198.19.0.21"},
    ]})
    assert t.machine("www1").roles == ("web", "app", "db-primary")
    assert len(t.vips) == 1


def test_round_trip_through_dict():
    t = topology.parse({"counts": {"web": 3}})
    again = topology.parse(t.to_dict(), "lab.json")
    assert again.machines == t.machines and again.vips == t.vips


def test_file_errors_name_the_file(tmp_path: Path):
    f = tmp_path / "hastack.toml"
    f.write_text("[counts\nweb = 2")
    with pytest.raises(HastackError, match=r"hastack.toml: not valid TOML"):
        topology.load(f)
    with pytest.raises(HastackError, match=r"no such topology file"):
        topology.load(tmp_path / "missing.toml")


def test_file_is_read(tmp_path: Path):
    f = tmp_path / "t.toml"
    f.write_text('[counts]\nweb = 1\napp = 1\n\n[site]\ndomain = "www.example.test"\n')
    t = topology.load(f)
    assert t.domain == "www.example.test" and len(t.with_role("web")) == 1
    assert t.source == str(f)


LB = {"name": "lb1", "roles": ["loadbalancer"], "private_address": "198.19.0.11",
      "public_address": "198.18.0.11"}
WWW = {"name": "www1", "roles": ["web", "app", "db-primary"], "private_address": "198.19.0.21"}


@pytest.mark.parametrize(("data", "message"), [
    ({"bogus": 1}, r"<defaults>: bogus: unknown key"),
    ({"counts": {"webs": 2}}, r"counts.webs: unknown key; allowed here: app, dns"),
    ({"site": {"domian": "x"}}, r"site.domian: unknown key"),
    ({"counts": {"web": 0}}, r"counts.web: 0 is out of range; use 1 to 9"),
    ({"counts": {"loadbalancers": 10}}, r"counts.loadbalancers: 10 is out of range"),
    ({"counts": {"replicas": -1}}, r"counts.replicas: -1 is out of range; use 0 to 8"),
    ({"counts": {"monitoring": 3}}, r"counts.monitoring: 3 is out of range; use 0 to 2"),
    ({"counts": {"app": "two"}}, r"counts.app: must be an integer"),
    ({"networks": {"public": "10.0.0.0/24"}}, r"networks.public: 10.0.0.0/24 is outside "
                                                r"198.18.0.0/15"),
    ({"networks": {"public": "198.18.0.0/24", "private": "198.18.0.0/25"}},
     r"networks: public .* overlap"),
    ({"networks": {"private": "banana"}}, r"networks.private: 'banana' is not a network"),
    ({"counts": {}, "machines": [LB, WWW]}, r"machines: give either \[counts\] or"),
    ({"machines": [LB, {**WWW, "name": "lb1"}]}, r"machines\[1\].name: duplicate machine name"),
    ({"machines": [LB, {**WWW, "private_address": "198.19.0.11"}]},
     r"machines\[1\]: address 198.19.0.11 of www1 is already used by lb1"),
    ({"machines": [LB, {**WWW, "private_address": "198.20.0.5"}]},
     r"machines\[1\].private_address: 198.20.0.5 is outside 198.18.0.0/15"),
    ({"machines": [LB, {**WWW, "private_address": "198.18.0.50"}]},
     r"machines\[1\].private_address: 198.18.0.50 is not in the network 198.19.0.0/24"),
    ({"machines": [LB, {**WWW, "private_address": "198.19.0.1"}]}, r"is reserved"),
    ({"machines": [LB, {**WWW, "roles": ["web", "app", "db"]}]},
     r"machines\[1\].roles\[2\]: unknown role 'db'; use one of"),
    ({"machines": [LB, {**WWW, "roles": ["web", "db-primary"]}]},
     r"role 'web' needs a machine with role 'app'; add one"),
    ({"machines": [{**LB, "roles": ["loadbalancer", "dns"]},
                   {**WWW, "roles": ["web", "app"]}]},
     r"role 'app' needs a machine with role 'db-primary'"),
    ({"machines": [LB, {**WWW, "public_address": "198.18.0.21"}]},
     r"machines\[1\].public_address: only loadbalancer, dns and monitoring machines"),
    ({"machines": [{k: v for k, v in LB.items() if k != "public_address"}, WWW]},
     r"machines\[0\].public_address: is required"),
    ({"machines": [LB, {**WWW, "name": "Web_1"}]},
     r"machines\[1\].name: 'Web_1' is not a valid machine name"),
    ({"machines": [LB, {"name": "x"}]}, r"machines\[1\].roles: is required"),
    ({"machines": [LB, {**WWW, "roles": ["web", "app", "db-primary", "db-replica"]}]},
     r"cannot be both db-primary and db-replica"),
    ({"machines": []}, r"machines: must be a non-empty list"),
    ({"machines": [LB, WWW] + [{"name": f"mon{i}", "roles": ["monitoring"],
                                "private_address": f"198.19.0.6{i}",
                                "public_address": f"198.18.0.6{i}"} for i in (1, 2, 3)]},
     r"machines: at most 2 machines may have role 'monitoring', found mon1, mon2, mon3"),
    ({"machines": [LB, WWW, {"name": "mon1", "roles": ["monitoring"],
                             "private_address": "198.19.0.61"}]},
     r"machines\[2\].public_address: is required for roles loadbalancer, dns and monitoring"),
    ({"machines": [{**LB, "roles": ["loadbalancer", "dns"]}, WWW,
                   {"name": "ns2", "roles": ["dns"], "private_address": "198.19.0.54",
                    "public_address": "198.18.0.54"}]},
     r"machines: at most one machine may have role 'dns', found lb1, ns2"),
    ({"machines": [LB, {**WWW, "roles": ["web", "app", "db-primary", "backup"]}]},
     r"machines: www1 cannot hold role 'backup' and be a database node"),
    ({"machines": [{**LB, "roles": ["loadbalancer", "backup"]}, WWW,
                   {"name": "bk2", "roles": ["backup"], "private_address": "198.19.0.71"}]},
     r"machines: at most one machine may have role 'backup', found lb1, bk2"),
    ({"counts": {"monitoring": 0}},
     r"counts|machines: the database cluster has 2 quorum votes \(db1, db2\); it needs at "
     r"least 3: give role 'quorum' to a machine that is not a DB node"),
    ({"machines": [LB, {**WWW, "roles": ["web", "app", "db-primary", "quorum"]},
                   {"name": "db2", "roles": ["db-replica"], "private_address": "198.19.0.42"}]},
     r"machines: www1 cannot hold role 'quorum' and be a database node"),
    ({"counts": {"loadbalancers": 2}, "vips": [{"address": "198.18.0.100"}]},
     r"vips: 1 virtual IPs for 2 load balancers"),
    ({"counts": {"loadbalancers": 1}, "vips": [{"address": "198.19.0.100"}]},
     r"vips\[0\].address: 198.19.0.100 is not in the network 198.18.0.0/24"),
    ({"counts": {"loadbalancers": 1}, "vips": [{"address": "198.18.0.11"}]},
     r"vips\[0\].address: 198.18.0.11 is the address of machine lb1"),
    ({"counts": {"loadbalancers": 2}, "vips": [{"address": "198.18.0.100", "vrid": 7},
                                               {"address": "198.18.0.101", "vrid": 7}]},
     r"vips\[1\].vrid: duplicate virtual router id 7"),
    ({"counts": {"loadbalancers": 2}, "vips": [{"address": "198.18.0.100"},
                                               {"address": "198.18.0.100"}]},
     r"vips\[1\].address: duplicate virtual IP"),
    ({"counts": {"loadbalancers": 1}, "vips": [{"address": "198.18.0.100", "vrid": 300}]},
     r"vips\[0\].vrid: 300 is out of range; use 1 to 255"),
])
def test_validation_errors(data, message):
    with pytest.raises(HastackError, match=message) as err:
        topology.parse(data)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["small.toml", "bigger.toml"])
def test_examples_are_valid(name):
    t = topology.load(Path(__file__).resolve().parents[2] / "examples" / name)
    assert len(t.vips) == len(t.with_role("loadbalancer"))
