"""The firewall: flows (role defaults) + topology -> each machine's nftables ruleset.

The rules come from src/hastack/firewall.py (the role's filter plugin calls it); the template
only prints them. These tests render every machine's ruleset, check it with nft itself, parse
it back to compare with the helper, and (as root) send real packets through it inside
throwaway network namespaces.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys
import types
from functools import cache
from pathlib import Path

import jinja2
import pytest
import yaml

from hastack import firewall, inventory, topology

ROOT = Path(__file__).resolve().parents[2]
ROLES = ROOT / "ansible" / "roles"
ROLE = ROLES / "firewall"
DEFAULTS = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
FLOWS = DEFAULTS["firewall_flows"]
# captured on a lab replica
SAMPLE = Path(__file__).resolve().parent / "data" / "nft-list-ruleset-db2.json"

TOPOLOGIES = {
    "default": None,
    "one-lb": {"counts": {"loadbalancers": 1}},
    "three-web": {"counts": {"web": 3}},
    "bigger": ROOT / "examples" / "bigger.toml",
    "small": ROOT / "examples" / "small.toml",
    "no-dns-no-monitoring": {"counts": {"dns": 0, "monitoring": 0, "replicas": 0}},
    "two-monitoring": {"counts": {"monitoring": 2}},
}


def site(name: str = "default") -> firewall.Site:
    spec = TOPOLOGIES[name]
    topo = topology.load(spec) if spec is None or isinstance(spec, Path) else topology.parse(spec)
    return firewall.Site.from_inventory(inventory.build(topo))


def rules(s: firewall.Site, host: str, flows=FLOWS) -> list[firewall.Rule]:
    return firewall.rules_for(flows, s, host)


def render(s: firewall.Site, host: str, flows=FLOWS) -> str:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             keep_trailing_newline=True)
    return env.get_template("nftables.conf.j2").render(
        **DEFAULTS, inventory_hostname=host,
        firewall_rules=[r.to_dict() for r in rules(s, host, flows)])


def all_rendered() -> list[tuple[str, str, str]]:
    return [(name, host, render(s, host)) for name in TOPOLOGIES
            for s in [site(name)] for host in s.machines]


def addr(s: firewall.Site, host: str, net: str = "private") -> str:
    m = s.machines[host]
    return m.private if net == "private" else str(m.public)


def group(s: firewall.Site, name: str, net: str = "private") -> set[str]:
    return {addr(s, h, net) for h in s.groups.get(name, ())}


def accepts(s, host, source, destination, proto, port=None):
    return firewall.permits(rules(s, host), "input", source, destination, proto, port)


def opens(s, host, destination, proto, port=None):
    return firewall.permits(rules(s, host), "output", addr(s, host), destination, proto, port)


def every_address(s: firewall.Site) -> set[str]:
    out = set(s.admin) | set(s.vips) | {"198.18.0.1", "203.0.113.9"}
    for m in s.machines.values():
        out |= {m.private} | ({m.public} if m.public else set())
    return out


# ---- nft accepts every rendered ruleset ------------------------------------------------------

def _nft_usable() -> str | None:
    if shutil.which("nft") is None:
        return "nft is not installed (apt-get install nftables)"
    if os.geteuid() != 0:
        return "nft -c needs root (CAP_NET_ADMIN) to check a ruleset"
    return None


needs_nft = pytest.mark.skipif(_nft_usable() is not None, reason=str(_nft_usable()))


@needs_nft
def test_nft_accepts_every_machines_ruleset(tmp_path):
    rendered = all_rendered()
    assert len(rendered) > 30
    for name, host, text in rendered:
        path = tmp_path / f"{name}-{host}.nft"
        path.write_text(text)
        result = subprocess.run(["nft", "-c", "-f", str(path)], capture_output=True, text=True)
        assert result.returncode == 0, f"{name}/{host}: {result.stderr}"


# ---- the template prints exactly the helper's rules ------------------------------------------

RULE_RE = re.compile(
    r'^(?:(?P<sfam>ip6?) saddr \{ (?P<saddr>[^}]*) \} )?'
    r'(?:(?P<dfam>ip6?) daddr \{ (?P<daddr>[^}]*) \} )?'
    r'(?:(?P<proto>tcp|udp) dport \{ (?P<ports>[^}]*) \}|meta l4proto (?P<l4>\d+)) '
    r'(?P<listening>socket transparent 0 )?counter accept comment "(?P<flow>[^"]+)"$')
BUILTIN = {"established", "invalid", "loopback", "icmp-echo", "icmp-errors", "icmpv6-echo",
           "icmpv6-errors", "icmpv6-nd", "icmp-out", "icmpv6-out", "default-drop",
           "forward-drop", "default-reject"}


def chains(text: str) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        m = re.match(r"^\s+chain (\w+) \{$", line)
        if m:
            current = found.setdefault(m.group(1), [])
        elif re.match(r"^\s+\}$", line):
            current = None
        elif current is not None and line.strip():
            current.append(line.strip())
    return found


def parsed_flow_rules(text: str) -> list[firewall.Rule]:
    protocols = {v: k for k, v in firewall.PROTOCOLS.items()}
    out = []
    for chain, lines in chains(text).items():
        for line in lines:
            comment = re.search(r'comment "([^"]+)"$', line)
            if comment is None or comment.group(1) in BUILTIN:
                continue
            m = RULE_RE.match(line)
            assert m, line
            family = m["sfam"] or m["dfam"]
            assert not (m["sfam"] and m["dfam"]) or m["sfam"] == m["dfam"], line

            def split(v):
                return None if v is None else tuple(a.strip() for a in v.split(","))

            proto = m["proto"] or protocols[int(m["l4"])]
            ports = tuple(int(p) for p in split(m["ports"]) or ())
            out.append(firewall.Rule(chain, m["flow"], family, split(m["saddr"]),
                                     split(m["daddr"]), proto, ports, bool(m["listening"])))
    return out


def test_the_template_prints_exactly_the_helpers_rules():
    for name in TOPOLOGIES:
        s = site(name)
        for host in s.machines:
            assert parsed_flow_rules(render(s, host)) == rules(s, host), f"{name}/{host}"


def test_default_policies_drop_and_the_last_rules_count_what_they_refuse():
    for _, host, text in all_rendered():
        found = chains(text)
        assert set(found) == {"input", "forward", "output"}, host
        for chain in found:
            assert f"hook {chain} priority filter; policy drop;" in found[chain][0]
        assert found["input"][1:4] == [
            'ct state established,related counter accept comment "established"',
            'ct state invalid counter drop comment "invalid"',
            'iif lo counter accept comment "loopback"']
        assert found["input"][-1] == 'counter drop comment "default-drop"'
        assert found["forward"][-1] == 'counter drop comment "forward-drop"'
        assert found["output"][-1] == ('counter reject with icmpx admin-prohibited '
                                       'comment "default-reject"')
        assert "limit rate 10/second" in text  # echo requests are rate-limited
        # only our table is replaced (fail2ban's stays); in one transaction
        assert "flush ruleset" not in text
        assert text.index("delete table inet hastack") < text.index("table inet hastack {")


def test_every_rule_counts_and_names_itself():
    for _, host, text in all_rendered():
        for chain, lines in chains(text).items():
            for line in lines[1:]:
                assert " counter " in f" {line} ", (host, chain, line)
                assert re.search(r'comment "[a-z0-9-]+"$', line), (host, chain, line)


# ---- who may talk to whom --------------------------------------------------------------------

def test_db_accepts_3306_only_from_app_and_other_db_nodes():
    """...and from the backup machine, which copies the primary's binary logs."""
    s = site()
    db1 = addr(s, "db1")
    allowed = (group(s, "app") | group(s, "database") | group(s, "backup")) - {db1}
    for source in every_address(s):
        verdict = accepts(s, "db1", source, db1, "tcp", 3306)
        assert bool(verdict) == (source in allowed), source
    assert accepts(s, "db1", addr(s, "app1"), db1, "tcp", 3306) == "db-from-app"
    assert accepts(s, "db1", addr(s, "db2"), db1, "tcp", 3306) == "db-replication"
    assert accepts(s, "db2", addr(s, "db1"), addr(s, "db2"), "tcp", 3306) == "db-replication"
    assert accepts(s, "db1", addr(s, "mon1"), db1, "tcp", 3306) == "db-binlog-from-backup"


def test_ssh_only_from_the_admin_addresses_and_only_on_private_addresses():
    """...and, to the database nodes, from the backup machine (its key can run nothing but
    hastack-backup-source there)."""
    for name in TOPOLOGIES:
        s = site(name)
        backup = {s.machines[b].private for b in s.groups.get("backup", ())}
        for host, m in s.machines.items():
            is_db = host in s.groups.get("database", ())
            for source in every_address(s):
                for dest in [m.private] + ([m.public] if m.public else []) + list(s.vips):
                    verdict = accepts(s, host, source, dest, "tcp", 22)
                    want = None
                    if source in s.admin and dest == m.private:
                        want = "ssh-from-admin"
                    elif is_db and source in backup and dest == m.private:
                        want = "db-backup-from-backup"
                    assert verdict == want, (name, host, source, dest)


def test_only_load_balancers_serve_80_and_443_and_only_on_the_vips():
    for name in TOPOLOGIES:
        s = site(name)
        for host, m in s.machines.items():
            is_lb = host in s.groups["loadbalancer"]
            for port in (80, 443):
                for vip in s.vips:
                    got = accepts(s, host, "203.0.113.9", vip, "tcp", port)
                    assert got == ("site-from-anyone" if is_lb else None), (name, host, vip)
                for own in filter(None, (m.private, m.public)):
                    assert not accepts(s, host, "203.0.113.9", own, "tcp", port), (host, own)
        for web in s.groups["web"]:
            # web servers take 443 from the LBs only (nginx speaks TLS to HAProxy)
            for source in every_address(s):
                got = accepts(s, web, source, addr(s, web), "tcp", 443)
                lbs = group(s, "loadbalancer") - {addr(s, web)}
                assert bool(got) == (source in lbs), (name, web, source)


def test_dns_answers_anyone_on_its_public_address_over_udp_and_tcp():
    s = site()
    ns1 = s.machines["ns1"]
    for proto in ("udp", "tcp"):
        assert accepts(s, "ns1", "203.0.113.9", ns1.public, proto, 53) == "dns-from-anyone"
        assert not accepts(s, "ns1", "203.0.113.9", ns1.private, proto, 53)
    for host in s.machines:
        if host != "ns1":
            assert not any(53 in r.ports for r in rules(s, host) if r.chain == "input"), host


def test_load_balancers_speak_vrrp_and_peers_to_each_other_only():
    s = site()
    lb1, lb2 = s.machines["lb1"], s.machines["lb2"]
    assert accepts(s, "lb1", lb2.public, lb1.public, "vrrp") == "vrrp-between-lbs"
    assert not accepts(s, "lb1", lb2.private, lb1.public, "vrrp")
    assert not accepts(s, "lb1", "203.0.113.9", lb1.public, "vrrp")
    assert opens(s, "lb1", lb2.public, "vrrp") == "vrrp-between-lbs"
    assert accepts(s, "lb1", lb2.private, lb1.private, "tcp", 10000) == "haproxy-peers"
    assert opens(s, "lb2", lb1.private, "tcp", 10000) == "haproxy-peers"
    # a single LB has no peer: no VRRP or peers rule at all
    one = site("one-lb")
    assert not [r for r in rules(one, "lb1") if r.flow in ("vrrp-between-lbs", "haproxy-peers")]


def test_monitoring_scrapes_every_exporter_and_nothing_else():
    s = site()
    mon = addr(s, "mon1")
    expected = {"node-exporter": ("all", 9100), "haproxy-metrics": ("loadbalancer", 8404),
                "site-metrics": ("app", 8000), "nginx-exporter": ("web", 9113),
                "mysqld-exporter": ("database", 9104)}
    for flow, (grp, port) in expected.items():
        for host in s.groups[grp]:
            if host != "mon1":
                assert accepts(s, host, mon, addr(s, host), "tcp", port) == flow, (host, flow)
                assert opens(s, "mon1", addr(s, host), "tcp", port) == flow
    # what monitoring may open: exactly those scrapes, and its probes of the site as a client
    # (HTTPS on the VIPs, DNS at the name server's public address)
    out = {(r.flow, d, p) for r in rules(s, "mon1") if r.chain == "output"
           for d in r.daddr for p in r.ports}
    want = {(flow, addr(s, h), port) for flow, (grp, port) in expected.items()
            for h in s.groups[grp] if h != "mon1"}
    want |= {("site-from-anyone", vip, port) for vip in s.vips for port in (80, 443)}
    want |= {("dns-from-anyone", s.machines["ns1"].public, 53)}
    # mon1 is also the backup machine: it pulls backups from the database nodes over SSH and
    # copies the primary's binary logs as a replication client
    want |= {("db-backup-from-backup", addr(s, h), 22) for h in s.groups["database"]}
    want |= {("db-binlog-from-backup", addr(s, h), 3306) for h in s.groups["database"]}
    assert out == want
    for vip in s.vips:
        assert accepts(s, "lb1", s.machines["mon1"].public, vip, "tcp", 443)
    # the admin reads the status pages; nobody else does
    admin = s.admin[0]
    assert accepts(s, "mon1", admin, mon, "tcp", 9090) == "prometheus-from-admin"
    assert accepts(s, "mon1", admin, mon, "tcp", 9093) == "alertmanager-from-admin"
    assert accepts(s, "lb1", admin, addr(s, "lb1"), "tcp", 8404) == "haproxy-stats-from-admin"
    assert not accepts(s, "mon1", addr(s, "web1"), mon, "tcp", 9090)
    assert accepts(s, "mon1", admin, mon, "tcp", 9095) == "alert-history-from-admin"
    # nothing may reach a monitoring machine on its public address
    assert not [r for r in rules(s, "mon1") if r.chain == "input" and r.daddr
                and s.machines["mon1"].public in r.daddr]


def test_two_monitoring_machines_work_as_one():
    s = site("two-monitoring")
    m1, m2 = s.machines["mon1"].private, s.machines["mon2"].private
    for flow, proto, port in (("prometheus-peers", "tcp", 9090),
                              ("alertmanager-from-prometheus", "tcp", 9093),
                              ("alertmanager-cluster", "tcp", 9094),
                              ("alertmanager-cluster", "udp", 9094),
                              ("alert-history", "tcp", 9095)):
        assert accepts(s, "mon2", m1, m2, proto, port) == flow
        assert opens(s, "mon1", m2, proto, port) == flow
        assert accepts(s, "mon1", m2, m1, proto, port) == flow
    assert not accepts(s, "mon1", s.machines["web1"].private, m1, "tcp", 9094)


def test_each_tier_opens_only_its_own_connections():
    s = site()
    opened = {host: {(r.flow, p) for r in rules(s, host) if r.chain == "output"
                     for p in r.ports or (None,)} for host in s.machines}
    assert opened["lb1"] == {("vrrp-between-lbs", None), ("haproxy-peers", 10000),
                             ("web-from-lb", 443)}
    assert opened["web1"] == {("app-from-web", 8000)}
    assert opened["app1"] == {("db-from-app", 3306)}
    # the DB nodes: replication, and their failover cluster (corosync's knet, the quorum
    # device's client to corosync-qnetd on mon1)
    assert opened["db1"] == opened["db2"] == {("db-replication", 3306), ("cluster-knet", 5405),
                                              ("cluster-qnetd", 5403)}
    assert opened["ns1"] == set()
    # a database machine opens nothing towards the web tier (or anything else)
    for web in s.groups["web"]:
        for port in (80, 443, 8000, 9113):
            assert not opens(s, "db1", addr(s, web), "tcp", port)
    assert not opens(s, "db1", "203.0.113.9", "tcp", 443)


def test_a_third_web_server_shows_up_in_the_load_balancers_rules():
    two, three = site("default"), site("three-web")
    web3 = addr(three, "web3")
    for lb in ("lb1", "lb2"):
        assert not opens(two, lb, web3, "tcp", 443)
        assert opens(three, lb, web3, "tcp", 443) == "web-from-lb"
        assert web3 in render(three, lb)
    assert accepts(three, "web3", addr(three, "lb1"), web3, "tcp", 443) == "web-from-lb"
    assert opens(three, "web3", addr(three, "app1"), "tcp", 8000) == "app-from-web"
    assert accepts(three, "app1", web3, addr(three, "app1"), "tcp", 8000) == "app-from-web"


def test_shared_machines_never_list_themselves():
    s = site("small")  # www1 is web and app; lb1 is loadbalancer and dns
    www1 = addr(s, "www1")
    for r in rules(s, "www1"):
        assert www1 not in (r.saddr or ()) + (r.daddr or ()) or r.chain == "input", r
        if r.chain == "input":
            assert www1 not in (r.saddr or ()), r
    assert not [r for r in rules(s, "www1") if r.flow == "app-from-web"]  # loopback does it
    assert accepts(s, "lb1", "203.0.113.9", s.machines["lb1"].public, "udp", 53)


def test_allowed_enumerates_every_accepted_flow_for_end_to_end_tests():
    s = site()
    found = firewall.allowed(FLOWS, s)
    web = {(a.machine, a.destination) for a in found if a.flow == "web-from-lb"}
    assert web == {("web1", addr(s, "web1")), ("web2", addr(s, "web2"))}
    site_flows = [a for a in found if a.flow == "site-from-anyone"]
    assert {(a.destination, a.port) for a in site_flows} == {
        (v, p) for v in s.vips for p in (80, 443)}
    assert all(a.sources is None for a in site_flows)
    ssh = [a for a in found if a.flow == "ssh-from-admin"]
    assert len(ssh) == len(s.machines)
    assert all(a.sources == frozenset(s.admin) and a.port == 22 for a in ssh)
    vrrp = [a for a in found if a.flow == "vrrp-between-lbs"]
    assert {(a.machine, a.proto, a.port) for a in vrrp} == {("lb1", "vrrp", None),
                                                          ("lb2", "vrrp", None)}
    for a in found:  # every enumerated flow is accepted by that machine's rules
        source = next(iter(a.sources)) if a.sources else "203.0.113.9"
        assert accepts(s, a.machine, source, a.destination, a.proto, a.port) == a.flow


def test_admin_addresses_and_extra_flows():
    inv = inventory.build(topology.load(None))
    inv["all"]["vars"]["hastack_admin_addresses"] = ["192.0.2.7", "198.19.0.1", "2001:db8::7"]
    s = firewall.Site.from_inventory(inv)
    assert s.admin == ("198.19.0.1", "192.0.2.7", "2001:db8::7")
    ssh = [r for r in rules(s, "web1") if r.flow == "ssh-from-admin"]
    # an IPv6 admin address cannot reach an IPv4-only machine: no ip6 rule without a daddr
    assert [(r.family, r.saddr) for r in ssh] == [("ip", ("198.19.0.1", "192.0.2.7"))]
    extra = [{"name": "apt-mirror", "from": "all", "to": ["203.0.113.80", "2001:db8::80"],
              "proto": "tcp", "ports": [80, 443]},
             {"name": "ntp", "from": "all", "to": "any", "proto": "udp", "ports": [123]}]
    r = rules(s, "db1", FLOWS + extra)
    apt = [x for x in r if x.flow == "apt-mirror"]
    assert [(x.chain, x.family, x.daddr) for x in apt] == [
        ("output", "ip", ("203.0.113.80",)), ("output", "ip6", ("2001:db8::80",))]
    ntp = [x for x in r if x.flow == "ntp"]
    assert [(x.chain, x.family, x.daddr, x.ports) for x in ntp] == [
        ("output", None, None, (123,))]
    text = render(s, "db1", FLOWS + extra)
    assert ('ip6 daddr { 2001:db8::80 } tcp dport { 80, 443 } counter accept '
            'comment "apt-mirror"') in text
    assert 'udp dport { 123 } counter accept comment "ntp"' in text
    if _nft_usable() is None:
        check = subprocess.run(["nft", "-c", "-f", "/dev/stdin"], input=text,
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr


@pytest.mark.parametrize(("flow", "message"), [
    ({"name": "x", "from": "webs", "to": "app", "proto": "tcp", "ports": [1]}, "'webs' is neither"),
    ({"name": "x", "from": "web", "to": "app", "proto": "sctp", "ports": [1]}, "proto must be"),
    ({"name": "x", "from": "web", "to": "app", "proto": "tcp"}, "tcp needs ports"),
    ({"name": "x", "from": "web", "to": "app", "proto": "vrrp", "ports": [1]}, "ports only go"),
    ({"name": "x", "from": "web", "to": "app", "proto": "tcp", "ports": [70000]}, "1 to 65535"),
    ({"name": "X y", "from": "web", "to": "app", "proto": "tcp", "ports": [1]}, "name 'X y'"),
    ({"name": "x", "from": "web", "to": "app", "at": "dmz", "proto": "tcp", "ports": [1]},
     "at must be one of"),
    ({"name": "x", "from": "web", "to": "app", "on": "vips", "proto": "tcp", "ports": [1]},
     "unknown key(s) on"),
    ({"name": "x", "to": "app", "proto": "tcp", "ports": [1]}, "needs both 'from' and 'to'"),
    ({"name": "x", True: "vips", "from": "web", "to": "app", "proto": "tcp", "ports": [1]},
     "unknown key(s) True"),
    ({"name": "x", "from": "web", "to": "app", "proto": "tcp", "ports": [1], "listening": "y"},
     "listening must be true or false"),
    ({"name": "x", "from": "web", "to": "app", "proto": "udp", "ports": [1], "listening": True},
     "listening goes with tcp only"),
])
def test_bad_flows_are_one_clear_error(flow, message):
    with pytest.raises(firewall.FlowError) as err:
        firewall.parse_flows([flow])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_flow_names_are_unique_and_no_admin_address_is_refused():
    with pytest.raises(firewall.FlowError, match="used twice"):
        firewall.parse_flows(FLOWS + FLOWS[:1])
    inv = inventory.build(topology.load(None))
    del inv["all"]["vars"]["hastack_admin_address"]
    with pytest.raises(firewall.FlowError, match="nobody could administer"):
        rules(firewall.Site.from_inventory(inv), "web1")


# ---- the deploy's own SSH --------------------------------------------------------------------

def test_ssh_check_passes_the_admin_and_skips_non_ssh_connections():
    s = site()
    r = rules(s, "db1")
    assert firewall.ssh_refusal("db1", r, "198.19.0.1 50000 198.19.0.41 22") == ""
    assert firewall.ssh_refusal("db1", r, "") == ""  # connection=local, nsenter: nothing
    assert firewall.ssh_refusal("db1", r, "garbage") == ""
    assert firewall.ssh_refusal("db1", r, "a b c d") == ""
    assert firewall.ssh_refusal("db1", r, "::ffff:198.19.0.1 50000 198.19.0.41 22") == ""


def test_ssh_check_refuses_a_deploy_from_another_address():
    s = site()
    msg = firewall.ssh_refusal("db1", rules(s, "db1"), "198.19.0.250 50000 198.19.0.41 22")
    assert msg == ("db1: the firewall would drop this deploy's own SSH from 198.19.0.250 "
                   "(only 198.19.0.1, 198.19.0.61 may SSH); set hastack_admin_address (or "
                   "hastack_admin_addresses) to the address you deploy from")
    inv = inventory.build(topology.load(None))
    inv["all"]["vars"]["hastack_admin_addresses"] = ["198.19.0.250"]
    s2 = firewall.Site.from_inventory(inv)
    assert firewall.ssh_refusal("db1", rules(s2, "db1"),
                                "198.19.0.250 50000 198.19.0.41 22") == ""
    inv["all"]["vars"]["hastack_admin_addresses"] = ["198.19.0.0/24"]
    s3 = firewall.Site.from_inventory(inv)
    assert firewall.ssh_refusal("db1", rules(s3, "db1"),
                                "198.19.0.250 50000 198.19.0.41 22") == ""


def test_ssh_check_refuses_ssh_to_a_public_address_or_another_port():
    s = site()
    msg = firewall.ssh_refusal("lb1", rules(s, "lb1"), "198.19.0.1 50000 198.18.0.11 22")
    assert msg.startswith("lb1: the firewall would drop this deploy's own SSH to 198.18.0.11 "
                          "(SSH is open only on 198.19.0.11)")
    msg = firewall.ssh_refusal("lb1", rules(s, "lb1"), "198.19.0.1 50000 198.19.0.11 2222")
    assert "to port 2222" in msg and "firewall_extra_flows" in msg


def test_ssh_check_works_on_the_data_ansible_holds():
    s = site()
    as_data = [r.to_dict() for r in rules(s, "app1")]
    assert json.loads(json.dumps(as_data)) == as_data
    assert firewall.ssh_refusal("app1", as_data, "198.19.0.1 1 198.19.0.31 22") == ""
    assert firewall.ssh_refusal("app1", as_data, "198.19.0.9 1 198.19.0.31 22")


# ---- the role's filter plugin is the helper ---------------------------------------------------

def _filter_plugin() -> dict:
    path = ROLE / "filter_plugins" / "hastack_firewall.py"
    spec = importlib.util.spec_from_file_location("test_hastack_firewall_plugin", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.FilterModule().filters()


def test_filter_plugin_gives_ansible_the_helpers_rules():
    filters = _filter_plugin()
    inv = inventory.build(topology.load(None))
    s = firewall.Site.from_inventory(inv)
    groups = {g: list(s.groups[g]) for g in s.groups}
    groups["ungrouped"] = []
    hostvars = {h: {**inv["all"]["vars"], **hv} for h, hv in inv["all"]["hosts"].items()}
    v = inv["all"]["vars"]
    for host in s.machines:
        got = filters["hastack_firewall_rules"](FLOWS, host, groups, hostvars,
                                                v["hastack_vips"], v["hastack_admin_address"], [])
        assert got == [r.to_dict() for r in rules(s, host)], host
        refusal = filters["hastack_firewall_ssh_refusal"](
            got, host, f"203.0.113.9 1 {addr(s, host)} 22")
        assert refusal.startswith(f"{host}: the firewall would drop")


def test_known_groups_are_the_inventorys():
    assert set(firewall.KNOWN_GROUPS) == {*inventory.GROUPS.values(), "database", "all"}


# ---- the flows agree with the daemons' ports ---------------------------------------------------

def _defaults(role: str) -> dict:
    return yaml.safe_load((ROLES / role / "defaults" / "main.yml").read_text())


def _flow_ports(name: str) -> list[int]:
    return next(f["ports"] for f in FLOWS if f["name"] == name)


def test_flow_ports_are_the_ports_the_daemons_listen_on():
    group_vars = yaml.safe_load((ROOT / "ansible" / "group_vars" / "all.yml").read_text())
    assert _flow_ports("node-exporter") == [_defaults("common")["common_node_exporter_port"]]
    stats = _defaults("loadbalancer")["loadbalancer_stats_port"]
    assert _flow_ports("haproxy-metrics") == _flow_ports("haproxy-stats-from-admin") == [stats]
    mon = _defaults("monitoring")
    assert _flow_ports("prometheus-from-admin") == _flow_ports("prometheus-peers") == [
        mon["monitoring_prometheus_port"]]
    assert _flow_ports("alertmanager-from-admin") == _flow_ports(
        "alertmanager-from-prometheus") == [mon["monitoring_alertmanager_port"]]
    assert _flow_ports("alertmanager-cluster") == [mon["monitoring_alertmanager_cluster_port"]]
    assert _flow_ports("alert-history") == _flow_ports("alert-history-from-admin") == [
        mon["monitoring_receiver_port"]]
    assert _flow_ports("nginx-exporter") == [group_vars["hastack_nginx_exporter_port"]]
    assert _flow_ports("mysqld-exporter") == [group_vars["hastack_mysqld_exporter_port"]]
    assert _flow_ports("app-from-web") == _flow_ports("site-metrics") == [
        group_vars["hastack_app_port"]]
    assert _flow_ports("db-from-app") == _flow_ports("db-replication") == [
        group_vars["hastack_db_port"]]


def _nginx_ports() -> set[int]:
    defaults = {**_defaults("web"), "hastack_private_address": "198.19.0.21",
                "hastack_domain": "www.foobar.com", "hastack_aliases": [],
                "hastack_app_port": 8000, "inventory_hostname": "web1",
                "groups": {"app": ["app1"]}, "hostvars": {"app1": {"hastack_private_address":
                                                                   "198.19.0.31"}}}
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLES / "web" / "templates"),
                             undefined=jinja2.ChainableUndefined)
    text = env.get_template("foobar.conf.j2").render(**defaults)
    return {int(p) for p in re.findall(r"listen 198\.19\.0\.21:(\d+)", text)}


def test_load_balancers_reach_nginx_on_the_port_it_listens_on():
    assert set(_flow_ports("web-from-lb")) == _nginx_ports()


def test_docs_describe_every_flow():
    doc = (ROOT / "docs" / "firewall.md").read_text()
    for f in FLOWS:
        assert f"`{f['name']}`" in doc, f["name"]
    for metric in ("hastack_firewall_packets_total", "hastack_firewall_bytes_total",
                   "hastack_firewall_loaded"):
        assert metric in doc


# ---- counters -> node-exporter textfile metrics ---------------------------------------------

@cache
def _metrics() -> types.ModuleType:
    path = str(ROLE / "files" / "hastack-firewall-metrics")
    loader = importlib.machinery.SourceFileLoader("hastack_firewall_metrics", path)
    module = types.ModuleType(loader.name)
    module.__file__ = path
    sys.modules[loader.name] = module
    loader.exec_module(module)
    return module


def test_metrics_from_a_captured_ruleset():
    m = _metrics()
    ruleset = json.loads(SAMPLE.read_text())
    samples = m.counters(ruleset)
    assert samples[("input", "default-drop", "drop")][0] > 0
    assert samples[("input", "db-from-app", "accept")][0] > 0
    assert samples[("output", "default-reject", "reject")][0] > 0
    assert samples[("output", "db-replication", "accept")][0] > 0
    assert ("forward", "forward-drop", "drop") in samples
    text = m.render(samples, m.loaded(ruleset))
    assert "hastack_firewall_loaded 1\n" in text
    line = re.search(r'^hastack_firewall_packets_total\{chain="input",rule="default-drop",'
                     r'verdict="drop"\} (\d+)$', text, re.M)
    assert line and int(line.group(1)) == samples[("input", "default-drop", "drop")][0]
    assert "# TYPE hastack_firewall_bytes_total counter" in text
    # every flow of db2 has its series, even at zero
    for r in rules(site(), "db2"):
        assert f'chain="{r.chain}",rule="{r.flow}",verdict="accept"' in text


def test_metrics_sum_split_rules_use_named_counters_and_escape_labels():
    m = _metrics()

    def rule(chain, comment, counter, verdict="accept"):
        return {"rule": {"family": "inet", "table": "hastack", "chain": chain,
                         "comment": comment, "expr": [{"counter": counter}, {verdict: None}]}}

    ruleset = {"nftables": [
        {"table": {"family": "inet", "name": "hastack"}},
        rule("input", "dns", {"packets": 2, "bytes": 20}),
        rule("input", "dns", {"packets": 3, "bytes": 30}),
        rule("input", 'say "hi"\\', "dropped_input", "drop"),
        {"counter": {"family": "inet", "table": "hastack", "name": "dropped_input",
                     "packets": 7, "bytes": 70}},
        {"rule": {"family": "inet", "table": "f2b-table", "chain": "input", "comment": "x",
                  "expr": [{"counter": {"packets": 1, "bytes": 1}}, {"drop": None}]}},
        {"rule": {"family": "inet", "table": "hastack", "chain": "input", "comment": "no",
                  "expr": [{"accept": None}]}},
    ]}
    samples = m.counters(ruleset)
    assert samples == {("input", "dns", "accept"): [5, 50],
                       ("input", 'say "hi"\\', "drop"): [7, 70]}
    text = m.render(samples, True)
    assert 'rule="say \\"hi\\"\\\\"' in text
    assert m.render({}, False).count("hastack_firewall_loaded 0") == 1


def test_metrics_file_is_replaced_atomically(tmp_path, monkeypatch):
    m = _metrics()
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "nft").write_text(f"#!/bin/sh\ncat {SAMPLE}\n")
    (fake / "nft").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    out = tmp_path / "hastack_firewall.prom"
    out.write_text("old\n")
    seen = []
    real_replace = os.replace

    def spy(src, dst):
        seen.append((Path(src), Path(dst)))
        assert Path(dst).read_text() == "old\n"  # untouched until the rename
        assert not Path(src).name.endswith(".prom")  # the collector ignores it meanwhile
        real_replace(src, dst)

    monkeypatch.setattr(m.os, "replace", spy)
    assert m.main([str(out)]) == 0
    assert seen and seen[0][1] == out and seen[0][0].parent == tmp_path
    assert "hastack_firewall_loaded 1" in out.read_text()
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in tmp_path.iterdir() if p.is_file()] == [out.name]
    monkeypatch.setattr(m.os, "replace", real_replace)
    (fake / "nft").write_text("#!/bin/sh\necho 'no netlink' >&2; exit 1\n")
    assert m.main([str(out)]) == 1
    assert "hastack_firewall_loaded 0" in out.read_text()


# ---- real packets, in throwaway network namespaces (root only) ---------------------------------

def _netns_usable() -> str | None:
    reason = _nft_usable()
    if reason:
        return reason
    for tool in ("unshare", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def _probe_machine(s: firewall.Site, host: str, tmp_path: Path, probes: list[dict],
                   listen: list[tuple[str, int]] = ()) -> dict:
    """Load host's ruleset in a new netns; every other address sits behind a veth."""
    prefix = {"private": 24, "public": 24}
    m = s.machines[host]
    mine = [f"{m.private}/{prefix['private']}"] + ([f"{m.public}/24"] if m.public else [])
    if host in s.groups["loadbalancer"]:
        mine += [f"{v}/24" for v in s.vips]
    own = {a.split("/")[0] for a in mine}
    others = sorted(a for a in every_address(s) - own
                    if ipaddress.ip_address(a) in ipaddress.ip_network("198.18.0.0/15"))
    ruleset = tmp_path / f"{host}.nft"
    ruleset.write_text(render(s, host))
    spec = tmp_path / f"{host}.json"
    for i, p in enumerate(probes):
        p["id"] = str(i)
    spec.write_text(json.dumps({"ruleset": str(ruleset), "machine": mine,
                                "others": [f"{a}/24" for a in others], "probes": probes,
                                "listen": [list(x) for x in listen]}))
    env = {**os.environ, "HASTACK_OUTER_NETNS": os.readlink("/proc/self/ns/net")}
    result = subprocess.run(["unshare", "-n", sys.executable,
                             str(Path(__file__).with_name("netns_probe.py")), str(spec)],
                            capture_output=True, text=True, env=env, timeout=120)
    if result.returncode != 0 and "veth" in result.stderr:
        pytest.skip(f"no veth in this kernel: {result.stderr.strip()}")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _net(address: str) -> str:
    return "public" if address.startswith("198.18.") else "private"


@pytest.mark.skipif(_netns_usable() is not None, reason=str(_netns_usable()))
@pytest.mark.parametrize("host", ["db1", "lb1", "web1", "mon1", "ns1"])
def test_the_kernel_enforces_the_rules(host, tmp_path):
    """Every (source, destination, port) the helper allows gets through; the rest does not."""
    s = site()
    m = s.machines[host]
    ports = sorted({p for f in FLOWS for p in f.get("ports", [])} | {80, 5432})
    dests = [m.private] + ([m.public] if m.public else [])
    listen: list[tuple[str, int]] = []
    unheard: set[str] = set()  # an LB's VIP where nothing listens (HAProxy dead)
    if host in s.groups["loadbalancer"]:
        dests += list(s.vips)
        listen = [(s.vips[0], 80), (s.vips[0], 443)]
        unheard = set(s.vips[1:])
    sources = sorted(a for a in every_address(s) - set(dests)
                     if a.startswith("198.1") and a != "198.18.0.1") + ["198.18.0.1"]
    probes = []
    for dest in dests:
        for port in ports:
            for proto in ("tcp", "udp") if port == 53 else ("tcp",):
                for source in sources:
                    if _net(source) != _net(dest):
                        continue  # no route between the nets in this little lab
                    want = accepts(s, host, source, dest, proto, port)
                    if dest in unheard and port in (80, 443):
                        want = False  # site-from-anyone is `listening`: dropped, not reset
                    probes.append({"direction": "in", "src": source, "dst": dest,
                                   "proto": proto, "port": port, "want": bool(want)})
    others = sorted(a for a in every_address(s) - set(dests) if a.startswith("198.1")
                    and _net(a) in {_net(d) for d in dests})
    for dest in others:
        for port in ports:
            want = opens(s, host, dest, "tcp", port)
            probes.append({"direction": "out", "src": None, "dst": dest, "proto": "tcp",
                           "port": port, "want": bool(want)})
    out = _probe_machine(s, host, tmp_path, probes, listen)
    wrong = [(p["direction"], p["src"], p["dst"], p["proto"], p["port"], out["results"][p["id"]])
             for p in probes if (out["results"][p["id"]] == "reached") != p["want"]]
    assert not wrong, wrong[:10]
    assert any(p["want"] for p in probes) and not all(p["want"] for p in probes)
    samples = _metrics().counters(out["ruleset"])
    assert samples[("input", "default-drop", "drop")][0] > 0
    if host == "db1" and os.environ.get("HASTACK_WRITE_NFT_SAMPLE"):
        SAMPLE.parent.mkdir(exist_ok=True)
        SAMPLE.write_text(json.dumps(out["ruleset"], indent=1) + "\n")
