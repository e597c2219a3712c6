"""Every machine's firewall, probed for real: what the flows allow is open, everything else
that listens is filtered, from the host (the internet and the admin bastion) and from every
machine to every other.

The expected answer for each probe comes from the same flows the rulesets are rendered
from (ansible/roles/firewall/defaults/main.yml, expanded by hastack.firewall) and the lab's
own inventory; what listens comes from the machines (`ss`), not from a list in this file.
"""

from __future__ import annotations

import ipaddress
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import pytest
import yaml

from hastack import firewall

from .conftest import deploy_with, poll, run

TIMEOUT = 1.5
# Ports nothing listens on: a default-drop firewall stays silent (filtered), not RST (closed).
UNUSED_PORTS = (23, 3389, 5432, 6379, 8080, 9999)

PROBE = r"""
import json, socket, sys
from concurrent.futures import ThreadPoolExecutor
def probe(t):
    s = socket.socket()
    s.settimeout(float(sys.argv[2]))
    try:
        s.connect((t[0], t[1]))
        return "open"
    except ConnectionRefusedError:
        return "closed"
    except OSError:
        return "filtered"
    finally:
        s.close()
targets = json.loads(sys.argv[1])
with ThreadPoolExecutor(64) as pool:
    print(json.dumps(list(pool.map(probe, targets))))
"""


def tcp(src: str, dst: str, port: int) -> str:
    s = socket.socket()
    s.settimeout(TIMEOUT)
    try:
        s.bind((src, 0))
        s.connect((dst, port))
        return "open"
    except ConnectionRefusedError:
        return "closed"
    except OSError:
        return "filtered"
    finally:
        s.close()


@pytest.fixture(scope="module")
def site(lab):
    inventory = yaml.safe_load(Path(lab.status["inventory"]).read_text())
    s = firewall.Site.from_inventory(inventory)
    flows = firewall.load_flows()
    rules = {name: firewall.rules_for(flows, s, name) for name in s.machines}
    return s, rules, inventory["all"]["vars"]


@pytest.fixture(scope="module")
def listening(lab, site):
    """machine -> [(address, port)] of every TCP socket listening on a non-loopback address."""
    s, _, _ = site
    found = {}
    for name, m in s.machines.items():
        own = [a for a in (m.private, m.public) if a]
        sockets = set()
        for line in lab.ssh(name, "ss -Hltn").splitlines():
            local = line.split()[3]
            addr, _, port = local.rpartition(":")
            addr = addr.strip("[]")
            if addr in ("*", "0.0.0.0", "::"):
                sockets.update((a, int(port)) for a in own)
            elif ":" not in addr and not ipaddress.ip_address(addr).is_loopback:
                sockets.add((addr, int(port)))
        found[name] = sorted(sockets)
    return found


def _owner(s: firewall.Site, address: str) -> str:
    for name, m in s.machines.items():
        if address in (m.private, m.public):
            return name
    return next(iter(s.groups["loadbalancer"]))  # a VIP: every LB has the same rules for it


def test_from_the_host_only_the_allowed_flows_are_open(lab, site, listening):
    s, rules, variables = site
    admin = str(variables["hastack_admin_address"])
    public = str(ipaddress.ip_network(variables["hastack_public_net"]).network_address + 1)
    private_net = ipaddress.ip_network(variables["hastack_private_net"])
    probes = set()
    for sockets in listening.values():
        probes.update(sockets)
        for address in {a for a, _ in sockets}:
            probes.update((address, p) for p in UNUSED_PORTS)
    cases = []
    for address, port in sorted(probes):
        source = admin if ipaddress.ip_address(address) in private_net else public
        expected = firewall.permits(rules[_owner(s, address)], "input", source, address,
                                    "tcp", port)
        cases.append((source, address, port, expected))
    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(lambda c: tcp(c[0], c[1], c[2]), cases))
    wrong = [(src, f"{a}:{p}", flow or "-", got) for (src, a, p, flow), got
             in zip(cases, results, strict=True)
             if got != ("open" if flow else "filtered")]
    assert not wrong, wrong
    opened = {(a, p) for (_, a, p, flow), got in zip(cases, results, strict=True) if flow}
    # the allowed list from the topology: everything the host may reach was probed and is open
    for allowed in firewall.allowed(firewall.load_flows(), s):
        if allowed.proto != "tcp":
            continue
        reachable = allowed.sources is None or admin in allowed.sources
        if reachable and (allowed.destination, allowed.port) in probes:
            assert (allowed.destination, allowed.port) in opened, allowed
    assert {(v["address"], 443) for v in variables["hastack_vips"]} <= opened
    assert all((m.private, 22) in opened for m in s.machines.values())
    assert not any(p == 22 and m.public == a for m in s.machines.values() for a, p in opened)
    # not vacuous: services that listen on the private net were probed and found filtered
    filtered = {(a, p) for (_, a, p, flow), got in zip(cases, results, strict=True)
                if not flow and got == "filtered"}
    for group, port in (("database", 3306), ("app", 8000), ("web", 443), ("all", 9100)):
        for name in s.groups.get(group, ()):
            assert (s.machines[name].private, port) in filtered, (name, port)


def _dns(server: str, source: str, name: str) -> bool:
    query = dns.message.make_query(name, "A")
    try:
        answer = dns.query.udp(query, server, timeout=TIMEOUT, source=source)
    except dns.exception.Timeout:
        return False
    return bool(answer.answer)


def test_dns_answers_on_its_public_address_only(lab, site):
    s, _, variables = site
    ns = [s.machines[n] for n in s.groups.get("dns", ())]
    if not ns:
        pytest.skip("this topology has no DNS machine")
    public = str(ipaddress.ip_network(variables["hastack_public_net"]).network_address + 1)
    assert _dns(ns[0].public, public, lab.domain)
    assert not _dns(ns[0].private, str(variables["hastack_admin_address"]), lab.domain)


def _probe_from(source: str, targets: list[list]) -> list[str]:
    """open/closed/filtered of each (address, port) as seen from `source` (PROBE over SSH)."""
    return json.loads(run("ssh", source, "--", "python3", "-c", PROBE, json.dumps(targets),
                          str(TIMEOUT)).stdout)


def test_between_machines_only_the_allowed_flows_connect(lab, site, listening):
    """Several source machines probe at once (each waits up to TIMEOUT on its filtered
    ports), but only a few: on a busy 2-core host a connect must not starve past TIMEOUT and
    read as filtered."""
    s, rules, _ = site
    plans = {}
    for source, m in s.machines.items():
        targets, expected = [], []
        for dest, sockets in listening.items():
            if dest == source:
                continue
            for address, port in sockets:
                if address != s.machines[dest].private:
                    continue  # machine to machine traffic stays on the private net
                out = firewall.permits(rules[source], "output", m.private, address, "tcp", port)
                into = firewall.permits(rules[dest], "input", m.private, address, "tcp", port)
                targets.append([address, port])
                expected.append(bool(out and into))
        plans[source] = targets, expected
    with ThreadPoolExecutor(4) as pool:
        results = dict(zip(plans, pool.map(lambda src: _probe_from(src, plans[src][0]), plans),
                           strict=True))
    wrong = []
    for source, (targets, expected) in plans.items():
        for (address, port), want, result in zip(targets, expected, results[source],
                                                  strict=True):
            if want != (result == "open"):
                wrong.append((source, f"{address}:{port}", "allowed" if want else "denied",
                              result))
    assert not wrong, wrong


def test_drops_are_counted_per_rule_and_exported(lab, site):
    s, _, _ = site
    db = next(iter(s.groups["database"]))
    target = s.machines[db].private
    assert tcp(str(s.admin[0]), target, 3306) == "filtered"

    def dropped() -> float:
        text = lab.ssh(db, "cat /var/lib/prometheus/node-exporter/hastack_firewall.prom")
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("hastack_firewall_packets_total{")
                   and 'chain="input"' in line and 'verdict="drop"' in line)

    before = dropped()
    for _ in range(3):
        tcp(str(s.admin[0]), target, 3306)
    poll(lambda: dropped() >= before + 3, 30, "the drop counter to be exported")


def test_a_firewall_that_would_cut_the_deploys_ssh_is_refused_before_any_change(lab, tmp_path):
    """An inventory whose admin address is not where the deploy runs from: every machine's
    firewall would drop this very SSH session, so nothing may be applied anywhere."""
    lb = next(m["name"] for m in lab.status["machines"] if "loadbalancer" in m["roles"])
    state = "nft -s list table inet hastack | sha256sum; stat -c %Y /etc/nftables.conf"
    before = lab.ssh(lb, state)
    line, _ = deploy_with(lab, tmp_path, hastack_admin_address="198.19.0.250")
    assert "the firewall would drop this deploy's own SSH from 198.19.0.1" in line, line
    assert lab.ssh(lb, state) == before
    with lab.client(lab.vips[0]) as c:
        assert c.get("/").status_code == 200
