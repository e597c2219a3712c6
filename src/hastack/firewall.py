"""Who may talk to whom: the firewall's flows expanded into concrete rules.

The flows are data (``firewall_flows`` in ansible/roles/firewall/defaults/main.yml); this
module is the one place that turns them, plus an inventory, into the rules of each machine.
The role calls it through its filter plugin (so the nftables template only prints what this
returns), the unit tests call it directly, and end-to-end tests can enumerate every allowed
flow of a lab with :func:`allowed`.

Standard library only: Ansible loads this file by path (see the role's filter_plugins), with
no guarantee that the hastack package is importable there.

A flow::

    - name: web-from-lb        # rule comment and metric label: [a-z0-9-]
      from: loadbalancer       # group(s), 'any' (everyone), 'admin', or addresses/networks
      to: web                  # group(s); or, for egress only: 'any', 'admin', addresses
      at: private              # which address of `to` machines: private (default), public, vips
      proto: tcp               # tcp, udp, vrrp, or a list of them
      ports: [443]             # tcp/udp only
      listening: true          # optional, tcp: accepted only while a socket listens there

A machine in a `to` group accepts the flow on its input chain; a machine in a `from` group
may open it on its output chain. Sources are the `from` machines' addresses on the same net
(their private addresses for ``at: private``; their public ones, else private, otherwise).
A machine never lists itself: traffic to its own addresses goes over loopback.

`listening` (nftables' socket match) makes a connection to a port nobody listens on fall to
the default drop instead of being reset by the kernel: for the VIPs, a client that reaches
an LB whose HAProxy just died, before its VIP moves, retransmits its SYN (~1 s later) to the
new owner instead of failing.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DEFAULTS = (Path(__file__).resolve().parents[2] / "ansible" / "roles" / "firewall" / "defaults"
            / "main.yml")

ANY = "any"
ADMIN = "admin"
AT = ("private", "public", "vips")
PROTOCOLS = {"tcp": 6, "udp": 17, "vrrp": 112}
# The groups every hastack inventory may have (hastack.inventory.GROUPS, plus the parents).
KNOWN_GROUPS = ("all", "loadbalancer", "dns", "web", "app", "database", "db_primary",
                "db_replica", "monitoring", "backup", "quorum")
FLOW_KEYS = {"name", "from", "to", "at", "proto", "ports", "listening"}
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
SSH_PORT = 22


class FlowError(ValueError):
    """A flow or an inventory the firewall cannot be built from (one line)."""


# ---- the data ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Flow:
    name: str
    sources: tuple[str, ...]
    targets: tuple[str, ...]
    at: str
    protos: tuple[str, ...]
    ports: tuple[int, ...]
    listening: bool = False


@dataclass(frozen=True)
class Machine:
    name: str
    private: str
    public: str | None = None

    def address(self, at: str) -> str:
        """Its address on the net a flow uses (machines without a public one use private)."""
        if at == "private" or self.public is None:
            return self.private
        return self.public


@dataclass(frozen=True)
class Site:
    machines: Mapping[str, Machine]
    groups: Mapping[str, tuple[str, ...]]  # flattened (children resolved), 'all' included
    vips: tuple[str, ...]
    admin: tuple[str, ...]

    @classmethod
    def from_inventory(cls, inv: Mapping[str, Any]) -> Site:
        """From the structure hastack.inventory.build() returns (a YAML inventory)."""
        root = inv["all"]
        variables = root.get("vars") or {}
        hosts = root.get("hosts") or {}
        machines = {name: _machine(name, hv or {}) for name, hv in hosts.items()}
        groups: dict[str, tuple[str, ...]] = {"all": tuple(machines)}

        def members(body: Mapping[str, Any] | None) -> list[str]:
            body = body or {}
            found = list(body.get("hosts") or {})
            for child, child_body in (body.get("children") or {}).items():
                found += members(child_body or (root.get("children") or {}).get(child))
            return found

        for group, body in (root.get("children") or {}).items():
            groups[group] = tuple(dict.fromkeys(members(body)))
        return cls(machines, groups, _vips(variables.get("hastack_vips")),
                   admin_addresses(variables.get("hastack_admin_address"),
                                   variables.get("hastack_admin_addresses")))

    @classmethod
    def from_hostvars(cls, groups: Mapping[str, Iterable[str]], hostvars: Mapping[str, Any],
                      vips: Any, admin_address: Any, admin_addresses_: Any) -> Site:
        """From Ansible's magic variables (what the role's filter receives)."""
        names = list(groups.get("all") or [])
        machines = {str(name): _machine(name, hostvars[name]) for name in names}
        flat = {str(g): tuple(str(h) for h in hosts) for g, hosts in groups.items()}
        return cls(machines, flat, _vips(vips), admin_addresses(admin_address, admin_addresses_))


def _machine(name: str, hv: Mapping[str, Any]) -> Machine:
    if "hastack_private_address" not in hv:
        raise FlowError(f"{name}: hastack_private_address is not set; the firewall needs "
                        "every machine's private address")
    public = hv.get("hastack_public_address") if "hastack_public_address" in hv else None
    return Machine(str(name), _address(f"{name}: hastack_private_address",
                                       hv["hastack_private_address"]),
                   _address(f"{name}: hastack_public_address", public) if public else None)


def _vips(raw: Any) -> tuple[str, ...]:
    out = []
    for v in raw or []:
        addr = v.get("address") if isinstance(v, Mapping) else v
        out.append(_address("hastack_vips", addr))
    return tuple(out)


def _address(where: str, value: Any) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise FlowError(f"{where}: '{value}' is not an IP address") from None


def _network(value: str) -> str | None:
    """A literal address or network in a flow ('192.0.2.7', '192.0.2.0/24'), else None."""
    try:
        net = ipaddress.ip_network(value, strict=False)
    except ValueError:
        return None
    return str(net.network_address) if net.num_addresses == 1 else str(net)


def admin_addresses(address: Any, addresses: Any) -> tuple[str, ...]:
    """hastack_admin_address plus the optional list hastack_admin_addresses, deduplicated."""
    raw = ([address] if address else []) + list(addresses or [])
    out = []
    for a in raw:
        net = _network(str(a))
        if net is None:
            raise FlowError(f"hastack_admin_address(es): '{a}' is not an address or network")
        out.append(net)
    return tuple(dict.fromkeys(out))


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return list(value) if isinstance(value, list | tuple) else [value]


def parse_flows(raw: Any, known_groups: Iterable[str] = ()) -> list[Flow]:
    """Validate the flows (``firewall_flows`` + ``firewall_extra_flows``) into Flow objects."""
    if not isinstance(raw, list | tuple):
        raise FlowError("firewall_flows must be a list of flows")
    known = set(KNOWN_GROUPS) | set(known_groups)
    flows: list[Flow] = []
    for i, item in enumerate(raw):
        where = f"firewall_flows[{i}]"
        if not isinstance(item, Mapping):
            raise FlowError(f"{where}: must be a mapping with name, from, to, proto, ports")
        name = str(item.get("name", ""))
        if not NAME_RE.match(name):
            raise FlowError(f"{where}: name '{name}' must be 1-63 of a-z, 0-9 and '-'")
        where = f"firewall flow '{name}'"
        unknown = sorted(str(k) for k in set(item) - FLOW_KEYS)
        if unknown:
            hint = " (YAML reads a bare 'on' key as true)" if "True" in unknown else ""
            raise FlowError(f"{where}: unknown key(s) {', '.join(unknown)}{hint}; "
                            f"allowed: {', '.join(sorted(FLOW_KEYS))}")
        if any(f.name == name for f in flows):
            raise FlowError(f"{where}: the name is used twice; names label counters")
        sources = [str(s) for s in _as_list(item.get("from"))]
        targets = [str(t) for t in _as_list(item.get("to"))]
        if not sources or not targets:
            raise FlowError(f"{where}: needs both 'from' and 'to'")
        for s in sources + targets:
            if s not in (ANY, ADMIN) and s not in known and _network(s) is None:
                raise FlowError(f"{where}: '{s}' is neither a group ({', '.join(sorted(known))}),"
                                " 'any', 'admin' nor an address")
        at = str(item.get("at", "private"))
        if at not in AT:
            raise FlowError(f"{where}: at must be one of {', '.join(AT)}, not '{at}'")
        protos = [str(p) for p in _as_list(item.get("proto"))]
        if not protos or any(p not in PROTOCOLS for p in protos):
            raise FlowError(f"{where}: proto must be {', '.join(PROTOCOLS)} or a list of them")
        ports = _as_list(item.get("ports"))
        has_ports = [p for p in protos if p in ("tcp", "udp")]
        if has_ports and not ports:
            raise FlowError(f"{where}: {'/'.join(has_ports)} needs ports")
        if ports and len(has_ports) != len(protos):
            raise FlowError(f"{where}: ports only go with tcp/udp; give vrrp its own flow")
        for p in ports:
            if not isinstance(p, int) or isinstance(p, bool) or not 1 <= p <= 65535:
                raise FlowError(f"{where}: port '{p}' must be a number from 1 to 65535")
        listening = item.get("listening", False)
        if not isinstance(listening, bool):
            raise FlowError(f"{where}: listening must be true or false, not '{listening}'")
        if listening and protos != ["tcp"]:
            raise FlowError(f"{where}: listening goes with tcp only")
        flows.append(Flow(name, tuple(sources), tuple(targets), at, tuple(protos),
                          tuple(sorted(set(ports))), listening))
    return flows


def load_flows(path: Path = DEFAULTS) -> list[dict[str, Any]]:
    """The role's default flows, as YAML data (firewall_flows)."""
    import yaml  # only here: Ansible's copy of this module never needs it

    return list(yaml.safe_load(path.read_text())["firewall_flows"])


# ---- expansion -----------------------------------------------------------------------------

@dataclass(frozen=True)
class Rule:
    """One nftables rule: None for saddr/daddr means no match on it (anyone/anywhere)."""

    chain: str  # input | output
    flow: str
    family: str | None  # ip | ip6 | None (both)
    saddr: tuple[str, ...] | None
    daddr: tuple[str, ...] | None
    proto: str
    ports: tuple[int, ...]
    listening: bool = False  # input only: accepted while a socket listens (socket match)

    def to_dict(self) -> dict[str, Any]:
        return {"chain": self.chain, "flow": self.flow, "family": self.family,
                "saddr": list(self.saddr) if self.saddr is not None else None,
                "daddr": list(self.daddr) if self.daddr is not None else None,
                "proto": self.proto, "protocol": PROTOCOLS[self.proto],
                "ports": list(self.ports), "listening": self.listening}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Rule:
        def opt(v: Any) -> tuple[str, ...] | None:
            return None if v is None else tuple(str(a) for a in v)

        return cls(str(d["chain"]), str(d["flow"]), d.get("family"), opt(d.get("saddr")),
                   opt(d.get("daddr")), str(d["proto"]), tuple(int(p) for p in d["ports"]),
                   bool(d.get("listening", False)))

    def matches(self, source: str, destination: str, proto: str, port: int | None) -> bool:
        if proto != self.proto or (self.ports and port not in self.ports):
            return False
        return _within(source, self.saddr) and _within(destination, self.daddr)


def _within(address: str, allowed: tuple[str, ...] | None) -> bool:
    if allowed is None:
        return True
    addr = ipaddress.ip_address(address)
    return any(addr in ipaddress.ip_network(a, strict=False) for a in allowed)


def _family(address: str) -> str:
    return "ip6" if ":" in address else "ip"


def _addresses(items: tuple[str, ...], site: Site, at: str, me: str,
               side: str) -> tuple[str, ...] | None:
    """Addresses of the groups/specials in `items` (None = anyone/anywhere), `me` left out.

    As sources, machines use their address on the flow's net (private if they have no
    public one). As destinations, ``at: vips`` means the VIPs (any LB may hold any of them)
    and ``at: public`` only the machines that have a public address.
    """
    out: list[str] = []
    for item in items:
        if item == ANY:
            return None
        if item == ADMIN:
            if not site.admin:
                raise FlowError("hastack_admin_address (or hastack_admin_addresses) is not set: "
                                "nobody could administer the machines through the firewall")
            out += site.admin
        elif item in site.groups or item in KNOWN_GROUPS:
            hosts = [site.machines[h] for h in site.groups.get(item, ())
                     if h != me and h in site.machines]
            if side == "source":
                out += [m.address(at) for m in hosts]
            elif at == "vips":
                out += site.vips if site.groups.get(item) else ()
            elif at == "public":
                out += [m.public for m in hosts if m.public]
            else:
                out += [m.private for m in hosts]
        else:
            out.append(str(_network(item)))
    return tuple(dict.fromkeys(out))


def _members(items: tuple[str, ...], site: Site) -> set[str]:
    return {h for g in items if g in site.groups for h in site.groups[g]}


def _split(chain: str, flow: Flow, saddr: tuple[str, ...] | None,
           daddr: tuple[str, ...] | None) -> list[Rule]:
    """One rule per address family (and protocol); none where a side has no address."""
    if saddr == () or daddr == ():
        return []
    families = sorted({_family(a) for a in (saddr or ()) + (daddr or ())})
    rules = []
    for family in families or [None]:
        s = None if saddr is None else tuple(a for a in saddr if _family(a) == family)
        d = None if daddr is None else tuple(a for a in daddr if _family(a) == family)
        if s == () or d == ():
            continue
        for proto in flow.protos:
            ports = flow.ports if proto in ("tcp", "udp") else ()
            rules.append(Rule(chain, flow.name, family, s, d, proto, ports,
                              flow.listening and chain == "input"))
    return rules


def rules_for(flows: Iterable[Flow] | list[Mapping[str, Any]], site: Site,
              host: str) -> list[Rule]:
    """The rules of one machine: input (flows it receives), then output (flows it opens)."""
    if host not in site.machines:
        raise FlowError(f"{host} is not a machine of the inventory")
    flows = _flows(flows, site)
    me = site.machines[host]
    inbound: list[Rule] = []
    outbound: list[Rule] = []
    for flow in flows:
        if host in _members(flow.targets, site):
            if flow.at == "vips":
                daddr = site.vips
            elif flow.at == "public":
                daddr = (me.public,) if me.public else ()
            else:
                daddr = (me.private,)
            saddr = _addresses(flow.sources, site, flow.at, host, "source")
            inbound += _split("input", flow, saddr, daddr)
        if host in _members(flow.sources, site):
            daddr = _addresses(flow.targets, site, flow.at, host, "destination")
            outbound += _split("output", flow, None, daddr)
    return inbound + outbound


def _flows(flows: Iterable[Any], site: Site) -> list[Flow]:
    flows = list(flows)
    if all(isinstance(f, Flow) for f in flows):
        return flows
    return parse_flows(flows, site.groups)


# ---- questions about the result ------------------------------------------------------------

@dataclass(frozen=True)
class Allowed:
    """A concrete allowed flow: `sources` (None = anyone) may reach `destination`:`port`."""

    flow: str
    machine: str  # whose input chain accepts it
    sources: frozenset[str] | None
    destination: str
    proto: str
    port: int | None


def allowed(flows: Iterable[Any], site: Site) -> list[Allowed]:
    """Every (sources, destination address, proto, port) the site's firewalls accept."""
    flows = _flows(flows, site)
    out = []
    for host in site.machines:
        for r in rules_for(flows, site, host):
            if r.chain != "input":
                continue
            sources = None if r.saddr is None else frozenset(r.saddr)
            for dest in r.daddr or ():
                for port in r.ports or (None,):
                    out.append(Allowed(r.flow, host, sources, dest, r.proto, port))
    return out


def permits(rules: Iterable[Rule], chain: str, source: str, destination: str, proto: str,
            port: int | None = None) -> str | None:
    """Name of the flow whose rule accepts this packet in `chain`, else None (dropped)."""
    for r in rules:
        if r.chain == chain and r.matches(source, destination, proto, port):
            return r.flow
    return None


def ssh_refusal(host: str, rules: Iterable[Rule | Mapping[str, Any]],
                ssh_connection: str) -> str:
    """'' if the rules keep this deploy's SSH connection, else the one-line reason.

    `ssh_connection` is $SSH_CONNECTION on the machine ("client cport server sport");
    empty (connection=local, nsenter, ...) means there is nothing to check.
    """
    parts = (ssh_connection or "").split()
    try:
        client, server = (_unmapped(a) for a in (parts[0], parts[2]))
        port = int(parts[3])
    except (IndexError, ValueError):
        return ""
    rules = [r if isinstance(r, Rule) else Rule.from_dict(r) for r in rules]
    ssh = [r for r in rules if r.chain == "input" and r.proto == "tcp"
           and (not r.ports or port in r.ports)]
    if any(r.matches(client, server, "tcp", port) for r in ssh):
        return ""
    if not ssh:
        return (f"{host}: the firewall would drop this deploy's own SSH to port {port} (it opens "
                f"SSH on port {SSH_PORT}); add a flow for port {port} to firewall_extra_flows")
    admins = sorted({a for r in ssh for a in (r.saddr or ("anyone",))})
    if any(_within(client, r.saddr) for r in ssh):
        targets = sorted({a for r in ssh for a in (r.daddr or ())})
        return (f"{host}: the firewall would drop this deploy's own SSH to {server} (SSH is open "
                f"only on {', '.join(targets)}); set ansible_host to that address")
    return (f"{host}: the firewall would drop this deploy's own SSH from {client} (only "
            f"{', '.join(admins)} may SSH); set hastack_admin_address (or "
            "hastack_admin_addresses) to the address you deploy from")


def _unmapped(address: str) -> str:
    """An IPv4 client of a dual-stack sshd may show as ::ffff:a.b.c.d."""
    addr = ipaddress.ip_address(address)
    mapped = getattr(addr, "ipv4_mapped", None)
    return str(mapped or addr)


# ---- Ansible's view (the role's filter plugin) ----------------------------------------------

def ansible_rules(flows: Any, host: str, groups: Mapping[str, Any], hostvars: Mapping[str, Any],
                  vips: Any, admin_address: Any = None,
                  admin_addresses_: Any = None) -> list[dict[str, Any]]:
    """Filter hastack_firewall_rules: the rules of `host` as plain data for the template."""
    site = Site.from_hostvars(groups, hostvars, vips, admin_address, admin_addresses_)
    return [r.to_dict() for r in rules_for(flows, site, str(host))]


def ansible_ssh_refusal(rules: list[Mapping[str, Any]], host: str, ssh_connection: str) -> str:
    """Filter hastack_firewall_ssh_refusal."""
    return ssh_refusal(str(host), rules, str(ssh_connection or ""))


FILTERS = {
    "hastack_firewall_rules": ansible_rules,
    "hastack_firewall_ssh_refusal": ansible_ssh_refusal,
}
