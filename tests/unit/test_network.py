"""The lab bridges' fixed MACs: derivation, and set by ensure_bridges (no real device made)."""

from __future__ import annotations

import pytest

from hastack import topology
from hastack.lab import network
from hastack.lab.network import PRIVATE_BRIDGE, PUBLIC_BRIDGE, bridge_mac


@pytest.mark.parametrize("name", [PUBLIC_BRIDGE, PRIVATE_BRIDGE, "hs-x", "a" * 15])
def test_bridge_mac_is_locally_administered_unicast(name):
    octets = [int(o, 16) for o in bridge_mac(name).split(":")]
    assert len(octets) == 6 and all(0 <= o <= 255 for o in octets)
    assert octets[0] & 0x02  # locally administered: no vendor's address
    assert not octets[0] & 0x01  # unicast


def test_bridge_mac_is_stable_and_differs_per_bridge():
    # Literal values: a changed derivation would change the host's MAC under a running lab.
    assert bridge_mac(PUBLIC_BRIDGE) == "02:81:9d:e5:e5:3f"
    assert bridge_mac(PRIVATE_BRIDGE) == "02:3c:e0:cd:e6:94"
    assert bridge_mac(PUBLIC_BRIDGE) != bridge_mac(PRIVATE_BRIDGE)


class _Link(dict):
    def get_attr(self, name):
        return self["attrs"].get(name)


class _FakeIPRoute:
    """Just enough of pyroute2's IPRoute for ensure_bridges; records what it is asked."""

    def __init__(self, links: dict[str, str], addresses: dict[str, int] | None = None):
        self.links = {name: (i + 1, mac) for i, (name, mac) in enumerate(links.items())}
        self.addresses = addresses or {}  # address -> prefix length, on the first link
        self.calls: list[tuple] = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def link_lookup(self, ifname):
        return [self.links[ifname][0]] if ifname in self.links else []

    def link(self, command, **kw):
        self.calls.append((command, kw))
        if command == "add":
            self.links[kw["ifname"]] = (len(self.links) + 1, kw.get("address", "aa:aa:aa:aa:aa:aa"))

    def get_links(self, index):
        mac = next(mac for i, mac in self.links.values() if i == index)
        return [_Link(attrs={"IFLA_ADDRESS": mac})]

    def get_addr(self, index=None, **_kw):
        return [_Link(attrs={"IFA_ADDRESS": a}, prefixlen=n) for a, n in self.addresses.items()
                if index == 1]

    def addr(self, command, **kw):
        self.calls.append(("addr " + command, kw))


@pytest.fixture
def fake(monkeypatch):
    def install(links: dict[str, str], addresses: dict[str, int] | None = None) -> _FakeIPRoute:
        ipr = _FakeIPRoute(links, addresses)
        monkeypatch.setattr(network, "_netlink", lambda: ipr)
        monkeypatch.setattr(network, "_set_sysctl", lambda path, value: None)
        return ipr
    return install


def test_a_new_bridge_is_created_with_its_mac(fake):
    ipr = fake({})
    network.ensure_bridges(topology.load(None))
    adds = [kw for command, kw in ipr.calls if command == "add"]
    assert adds == [{"ifname": n, "kind": "bridge", "address": bridge_mac(n)}
                    for n in (PUBLIC_BRIDGE, PRIVATE_BRIDGE)]
    assert not [kw for command, kw in ipr.calls if command == "set" and "address" in kw]


def test_an_existing_bridge_gets_its_mac_back(fake):
    # hs-pub as a bridge without a fixed MAC has it: its lowest port's (lb1's veth, say).
    ipr = fake({PUBLIC_BRIDGE: "5a:01:02:03:04:05", PRIVATE_BRIDGE: bridge_mac(PRIVATE_BRIDGE)})
    network.ensure_bridges(topology.load(None))
    sets = [kw for command, kw in ipr.calls if command == "set" and "address" in kw]
    assert sets == [{"index": 1, "address": bridge_mac(PUBLIC_BRIDGE)}]


def test_another_plans_address_goes_with_its_own_prefix_and_host_addresses_stay(fake):
    """A /32 on the bridge is an extra outside client of a test or benchmark, in use."""
    macs = {name: bridge_mac(name) for name in (PUBLIC_BRIDGE, PRIVATE_BRIDGE)}
    ipr = fake(macs, {"198.18.0.1": 24, "198.18.7.1": 16, "198.18.0.250": 32})
    network.ensure_bridges(topology.load(None))
    deleted = [(kw["address"], kw["prefixlen"]) for c, kw in ipr.calls if c == "addr del"]
    assert set(deleted) == {("198.18.7.1", 16)}


def test_pulling_a_machines_cables_switches_every_one_it_has_and_times_it(fake):
    ipr = fake({"hs-lb1-0": "02:00:00:00:00:01", "hs-lb1-1": "02:00:00:00:00:02"})
    t0, t1 = network.set_links(["hs-lb1-0", "hs-lb1-1"], up=False)
    assert t0 <= t1
    assert [(c, kw) for c, kw in ipr.calls] == [("set", {"index": 1, "state": "down"}),
                                                  ("set", {"index": 2, "state": "down"})]


def test_a_missing_cable_is_skipped_and_none_at_all_is_none(fake):
    ipr = fake({"hs-db1-1": "02:00:00:00:00:01"})  # db1 has no public link
    assert network.set_links(["hs-db1-0", "hs-db1-1"], up=True) is not None
    assert ipr.calls == [("set", {"index": 1, "state": "up"})]
    assert network.set_links(["hs-gone-0", "hs-gone-1"], up=False) is None
