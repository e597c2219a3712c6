"""The topology: which machines exist, with which roles and addresses.

A TOML file (``hastack.toml``) is optional; without one the defaults are the seed's design
(two active-active LBs, two web, two app, a MariaDB primary and a replica, DNS, monitoring).
Everything is validated before anything is created, and every error is one line naming
the file, the key and what to do.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

from hastack.errors import HastackError

LAB_SPACE = IPv4Network("198.18.0.0/15")

ROLES = ("loadbalancer", "dns", "web", "app", "db-primary", "db-replica", "monitoring", "backup",
         "quorum")
# Roles whose machines also sit on the public net. Monitoring does because its blackbox
# probes reach the site the way an outside client does: DNS at the name server's public
# address, then HTTPS on each VIP (docs/monitoring.md).
PUBLIC_ROLES = ("loadbalancer", "dns", "monitoring")

# role -> roles that must exist somewhere in the topology for it to work
DEPENDENCIES = {
    "loadbalancer": ("web",),
    "dns": ("loadbalancer",),
    "web": ("app",),
    "app": ("db-primary",),
    "db-replica": ("db-primary",),
    "backup": ("db-primary",),
}
# Counted topologies give these roles to the first machine of another role too: the
# database's backups live on the first monitoring machine (not a DB node: they must outlive
# the node they were taken from), and so does the database cluster's third quorum vote
# (corosync-qnetd: two DB nodes alone cannot tell a dead peer from a cut link).
SHARED_ROLES = {"monitoring": ("backup", "quorum")}

# [counts] key -> (role, default, minimum, maximum, name prefix, host offset in the subnets)
COUNTS = {
    "loadbalancers": ("loadbalancer", 2, 1, 9, "lb", 11),
    "web": ("web", 2, 1, 9, "web", 21),
    "app": ("app", 2, 1, 9, "app", 31),
    "replicas": ("db-replica", 1, 0, 8, "db", 42),
    "dns": ("dns", 1, 0, 1, "ns", 53),
    # Two monitoring machines scrape everything each and form one Alertmanager cluster.
    "monitoring": ("monitoring", 1, 0, 2, "mon", 61),
}
PRIMARY_OFFSET = 41
VIP_OFFSET = 100
VRID_BASE = 51

# topology role -> Ansible group: inventory.build() writes these groups, from_inventory() reads
# them back (a machine's roles are the role groups it belongs to).
ROLE_GROUPS = {
    "loadbalancer": "loadbalancer",
    "dns": "dns",
    "web": "web",
    "app": "app",
    "db-primary": "db_primary",
    "db-replica": "db_replica",
    "monitoring": "monitoring",
    "backup": "backup",
    "quorum": "quorum",
}

NAME_RE = re.compile(r"^[a-z][a-z0-9]{0,9}$")

TOP_KEYS = {"site", "networks", "counts", "vips", "machines"}
SITE_KEYS = {"domain", "aliases", "debug_headers"}
NETWORK_KEYS = {"public", "private"}
VIP_KEYS = {"address", "vrid"}
MACHINE_KEYS = {"name", "roles", "private_address", "public_address"}

DEFAULT_DOMAIN = "www.foobar.com"
DEFAULT_PUBLIC = "198.18.0.0/24"
DEFAULT_PRIVATE = "198.19.0.0/24"


@dataclass(frozen=True)
class Machine:
    name: str
    roles: tuple[str, ...]
    private_address: IPv4Address
    public_address: IPv4Address | None = None

    @property
    def addresses(self) -> list[str]:
        found = [self.public_address, self.private_address]
        return [str(a) for a in found if a is not None]


@dataclass(frozen=True)
class Vip:
    address: IPv4Address
    vrid: int


@dataclass(frozen=True)
class Topology:
    domain: str
    aliases: tuple[str, ...]
    public_net: IPv4Network
    private_net: IPv4Network
    machines: tuple[Machine, ...]
    vips: tuple[Vip, ...]
    source: str = "<defaults>"
    # X-DB/X-DB-Role (internal addresses, roles) leave the edge for every client, not only
    # for trusted ones.
    debug_headers: bool = False
    # The admin bastion's private address when it is not the private net's first address
    # (real servers: hastack_admin_address); None in the lab, where it is derived.
    admin_address: IPv4Address | None = None

    @property
    def host_public(self) -> IPv4Address:
        """The host's own address on the public net: the lab's 'internet' client."""
        return self.public_net.network_address + 1

    @property
    def host_private(self) -> IPv4Address:
        """The host's address on the private net: the admin bastion."""
        return self.admin_address or self.private_net.network_address + 1

    def with_role(self, role: str) -> list[Machine]:
        return [m for m in self.machines if role in m.roles]

    def machine(self, name: str) -> Machine:
        for m in self.machines:
            if m.name == name:
                return m
        known = ", ".join(m.name for m in self.machines)
        raise HastackError(f"no machine named '{name}' in the topology; known: {known}")

    def to_dict(self) -> dict[str, Any]:
        """The topology in the file format (explicit machines), so parse() reads it back."""
        machines = []
        for m in self.machines:
            entry: dict[str, Any] = {"name": m.name, "roles": list(m.roles),
                                     "private_address": str(m.private_address)}
            if m.public_address is not None:
                entry["public_address"] = str(m.public_address)
            machines.append(entry)
        return {
            "site": {"domain": self.domain, "aliases": list(self.aliases),
                     "debug_headers": self.debug_headers},
            "networks": {"public": str(self.public_net), "private": str(self.private_net)},
            "vips": [{"address": str(v.address), "vrid": v.vrid} for v in self.vips],
            "machines": machines,
        }


class _Checker:
    """Raises one-line errors that name the file and the key."""

    def __init__(self, source: str):
        self.source = source

    def fail(self, key: str, message: str) -> None:
        raise HastackError(f"{self.source}: {key}: {message}")

    def table(self, key: str, value: Any, allowed: set[str]) -> dict[str, Any]:
        if not isinstance(value, dict):
            self.fail(key, "must be a table")
        for k in value:
            if k not in allowed:
                where = f"{key}.{k}" if key else k
                self.fail(where, f"unknown key; allowed here: {', '.join(sorted(allowed))}")
        return value

    def string(self, key: str, value: Any) -> str:
        if not isinstance(value, str) or not value:
            self.fail(key, "must be a non-empty string")
        return value

    def integer(self, key: str, value: Any, low: int, high: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool):
            self.fail(key, f"must be an integer from {low} to {high}")
        if not low <= value <= high:
            self.fail(key, f"{value} is out of range; use {low} to {high}")
        return value

    def network(self, key: str, value: Any) -> IPv4Network:
        try:
            net = ipaddress.ip_network(self.string(key, value), strict=True)
        except ValueError as exc:
            self.fail(key, f"'{value}' is not a network like 198.18.0.0/24 ({exc})")
        if not isinstance(net, IPv4Network) or not net.subnet_of(LAB_SPACE):
            self.fail(key, f"{value} is outside {LAB_SPACE}; lab addresses must stay inside it")
        if net.prefixlen > 28:
            self.fail(key, f"{value} is too small; use a /28 or larger")
        return net

    def address(self, key: str, value: Any, net: IPv4Network) -> IPv4Address:
        try:
            addr = ipaddress.ip_address(self.string(key, value))
        except ValueError:
            self.fail(key, f"'{value}' is not an IPv4 address")
        if not isinstance(addr, IPv4Address) or addr not in LAB_SPACE:
            self.fail(key, f"{value} is outside {LAB_SPACE}; lab addresses must stay inside it")
        if addr not in net:
            self.fail(key, f"{value} is not in the network {net}; pick an address inside it")
        if addr in (net.network_address, net.broadcast_address, net.network_address + 1):
            self.fail(key, f"{value} is reserved (network, broadcast or the host's .1)")
        return addr


def load(path: Path | None) -> Topology:
    """Read and validate a topology file; ``None`` means the defaults."""
    if path is None:
        return parse({}, "<defaults>")
    if not path.exists():
        raise HastackError(f"{path}: no such topology file; check the -t argument")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise HastackError(f"{path}: not valid TOML: {exc}") from None
    return parse(data, str(path))


def parse(data: dict[str, Any], source: str = "<defaults>") -> Topology:
    c = _Checker(source)
    c.table("", data, TOP_KEYS)

    site = c.table("site", data.get("site", {}), SITE_KEYS)
    domain = c.string("site.domain", site.get("domain", DEFAULT_DOMAIN))
    aliases_raw = site.get("aliases", ["foobar.com"])
    if not isinstance(aliases_raw, list):
        c.fail("site.aliases", "must be a list of domain names")
    aliases = tuple(c.string(f"site.aliases[{i}]", a) for i, a in enumerate(aliases_raw))
    debug_headers = site.get("debug_headers", False)
    if not isinstance(debug_headers, bool):
        c.fail("site.debug_headers", "must be true or false")

    nets = c.table("networks", data.get("networks", {}), NETWORK_KEYS)
    public = c.network("networks.public", nets.get("public", DEFAULT_PUBLIC))
    private = c.network("networks.private", nets.get("private", DEFAULT_PRIVATE))
    if public.overlaps(private):
        c.fail("networks", f"public {public} and private {private} overlap; use separate networks")

    if "machines" in data and "counts" in data:
        c.fail("machines", "give either [counts] or [[machines]], not both")
    if "machines" in data:
        machines = _explicit_machines(c, data["machines"], public, private)
    else:
        machines = _counted_machines(c, data.get("counts", {}), public, private)

    _check_unique(c, machines)
    _check_roles(c, machines)
    lbs = [m for m in machines if "loadbalancer" in m.roles]
    vips = _vips(c, data.get("vips"), len(lbs), public, machines)
    return Topology(domain, aliases, public, private, tuple(machines), tuple(vips), source,
                    debug_headers)


def _counted_machines(c: _Checker, raw: Any, public: IPv4Network,
                      private: IPv4Network) -> list[Machine]:
    counts = c.table("counts", raw, set(COUNTS))
    numbers = {key: c.integer(f"counts.{key}", counts.get(key, spec[1]), spec[2], spec[3])
               for key, spec in COUNTS.items()}
    machines: list[Machine] = []
    for key, (role, _default, _low, _high, prefix, offset) in COUNTS.items():
        n = numbers[key]
        # a shared role goes along only where it has something to do (no replicas: no
        # failover cluster, so no quorum vote)
        shared = tuple(r for r in SHARED_ROLES.get(role, ())
                       if r != "quorum" or numbers["replicas"] > 0)
        if role == "db-replica":
            primary = private.network_address + PRIMARY_OFFSET
            machines.append(Machine("db1", ("db-primary",), primary))
        for i in range(n):
            index = i + 2 if role == "db-replica" else i + 1
            pub = public.network_address + offset + i if role in PUBLIC_ROLES else None
            roles = (role, *shared) if i == 0 else (role,)
            machines.append(Machine(f"{prefix}{index}", roles,
                                    private.network_address + offset + i, pub))
    for m in machines:
        outside_public = m.public_address is not None and m.public_address not in public
        if m.private_address not in private or outside_public:
            c.fail("counts", f"{m.name} would get an address outside its network; "
                             "use larger networks or smaller counts")
    return machines


def _explicit_machines(c: _Checker, raw: Any, public: IPv4Network,
                       private: IPv4Network) -> list[Machine]:
    if not isinstance(raw, list) or not raw:
        c.fail("machines", "must be a non-empty list of [[machines]] tables")
    machines = []
    for i, item in enumerate(raw):
        key = f"machines[{i}]"
        t = c.table(key, item, MACHINE_KEYS)
        for required in ("name", "roles", "private_address"):
            if required not in t:
                c.fail(f"{key}.{required}", "is required")
        name = c.string(f"{key}.name", t["name"])
        if not NAME_RE.match(name):
            c.fail(f"{key}.name", f"'{name}' is not a valid machine name; use 1-10 lowercase "
                                  "letters and digits, starting with a letter")
        roles_raw = t["roles"]
        if not isinstance(roles_raw, list) or not roles_raw:
            c.fail(f"{key}.roles", "must be a non-empty list of roles")
        roles = []
        for j, r in enumerate(roles_raw):
            if r not in ROLES:
                c.fail(f"{key}.roles[{j}]", f"unknown role '{r}'; use one of: {', '.join(ROLES)}")
            if r in roles:
                c.fail(f"{key}.roles[{j}]", f"role '{r}' is listed twice")
            roles.append(r)
        if "db-primary" in roles and "db-replica" in roles:
            c.fail(f"{key}.roles", "a machine cannot be both db-primary and db-replica")
        priv = c.address(f"{key}.private_address", t["private_address"], private)
        needs_public = any(r in PUBLIC_ROLES for r in roles)
        pub = None
        if needs_public:
            if "public_address" not in t:
                c.fail(f"{key}.public_address",
                       f"is required for roles {_public_roles()} (they sit on the public net)")
            pub = c.address(f"{key}.public_address", t["public_address"], public)
        elif "public_address" in t:
            c.fail(f"{key}.public_address", f"only {_public_roles()} machines sit on the "
                                            "public net; remove it")
        machines.append(Machine(name, tuple(roles), priv, pub))
    return machines


def _public_roles() -> str:
    return ", ".join(PUBLIC_ROLES[:-1]) + " and " + PUBLIC_ROLES[-1]


def _check_unique(c: _Checker, machines: list[Machine]) -> None:
    names: set[str] = set()
    addrs: dict[IPv4Address, str] = {}
    for i, m in enumerate(machines):
        if m.name in names:
            c.fail(f"machines[{i}].name",
                   f"duplicate machine name '{m.name}'; names must be unique")
        names.add(m.name)
        for addr in (m.private_address, m.public_address):
            if addr is None:
                continue
            if addr in addrs:
                c.fail(f"machines[{i}]", f"address {addr} of {m.name} is already used by "
                                         f"{addrs[addr]}; give each machine its own")
            addrs[addr] = m.name


def _check_roles(c: _Checker, machines: list[Machine], key: str = "machines") -> None:
    present = {r for m in machines for r in m.roles}
    for role, needs in DEPENDENCIES.items():
        for need in needs:
            if role in present and need not in present:
                c.fail(key, f"role '{role}' needs a machine with role '{need}'; add one")
    for role in ("loadbalancer", "web", "app", "db-primary"):
        if role not in present:
            c.fail(key, f"the site needs at least one machine with role '{role}'")
    primaries = [m.name for m in machines if "db-primary" in m.roles]
    if len(primaries) > 1:
        c.fail(key, f"exactly one db-primary is allowed, found {', '.join(primaries)}")
    for m in machines:
        if "backup" in m.roles and {"db-primary", "db-replica"} & set(m.roles):
            c.fail(key, f"{m.name} cannot hold role 'backup' and be a database node: a "
                        "backup must outlive the node it was taken from; give it another machine")
        if "quorum" in m.roles and {"db-primary", "db-replica"} & set(m.roles):
            c.fail(key, f"{m.name} cannot hold role 'quorum' and be a database node: the "
                        "quorum vote must survive the loss of any DB node; give it another machine")
    for role, most in (("dns", 1), ("monitoring", 2), ("backup", 1), ("quorum", 1)):
        holders = [m.name for m in machines if role in m.roles]
        if len(holders) > most:
            c.fail(key, f"at most {'one machine' if most == 1 else f'{most} machines'} "
                               f"may have role '{role}', found {', '.join(holders)}")
    _check_quorum_votes(c, machines, key)


def _check_quorum_votes(c: _Checker, machines: list[Machine], key: str) -> None:
    """With replicas, the DB nodes form a failover cluster: a node may take writes only
    while it holds a majority of at least three votes (one per DB node, one from the quorum
    machine), or a cut link would leave two primaries."""
    db = [m.name for m in machines if {"db-primary", "db-replica"} & set(m.roles)]
    quorum = [m.name for m in machines if "quorum" in m.roles]
    if len(db) >= 2 and len(db) + len(quorum) < 3:
        c.fail(key, f"the database cluster has {len(db) + len(quorum)} quorum votes "
                    f"({', '.join(db + quorum)}); it needs at least 3: give role 'quorum' "
                    "to a machine that is not a DB node (counted topologies: a monitoring "
                    "machine), or add a replica")


def _vips(c: _Checker, raw: Any, lb_count: int, public: IPv4Network,
          machines: list[Machine]) -> list[Vip]:
    if raw is None:
        raw = [{"address": str(public.network_address + VIP_OFFSET + i), "vrid": VRID_BASE + i}
               for i in range(lb_count)]
    if not isinstance(raw, list):
        c.fail("vips", "must be a list of [[vips]] tables with address and vrid")
    if len(raw) != lb_count:
        c.fail("vips", f"{len(raw)} virtual IPs for {lb_count} load balancers; give exactly one "
                       "per load balancer (each LB is master of one)")
    taken = {a: m.name for m in machines for a in (m.private_address, m.public_address) if a}
    vips: list[Vip] = []
    for i, item in enumerate(raw):
        key = f"vips[{i}]"
        t = c.table(key, item, VIP_KEYS)
        if "address" not in t:
            c.fail(f"{key}.address", "is required")
        addr = c.address(f"{key}.address", t["address"], public)
        if addr in taken:
            c.fail(f"{key}.address", f"{addr} is the address of machine {taken[addr]}; "
                                     "a virtual IP must be an unused address")
        vrid = c.integer(f"{key}.vrid", t.get("vrid", VRID_BASE + i), 1, 255)
        for v in vips:
            if v.address == addr:
                c.fail(f"{key}.address", f"duplicate virtual IP {addr}")
            if v.vrid == vrid:
                c.fail(f"{key}.vrid", f"duplicate virtual router id {vrid}; each VIP needs its own")
        vips.append(Vip(addr, vrid))
    return vips


# ---- inventories: the model of servers someone else made ----------------------------------
#
# Real servers are described by an Ansible inventory, not a topology file. Both shapes an
# inventory reaches us in (the YAML that inventory.build() writes, and the JSON of
# `ansible-inventory --list`, which has group_vars resolved) are reduced to the same three
# things -- each host's variables, each group's members, the site's variables -- and one
# function makes the Topology from those. Addresses are the servers' own: no lab-space checks.

SITE_VARS = ("hastack_domain", "hastack_aliases", "hastack_vips", "hastack_public_net",
             "hastack_private_net", "hastack_admin_address", "hastack_debug_headers")
REQUIRED_GROUPS = ("loadbalancer", "web", "app", "db_primary")
PUBLIC_GROUPS = ("loadbalancer", "dns")  # must have a public address (check_file agrees)


def from_inventory(data: Any, source: str) -> Topology:
    """A YAML inventory (all: vars/hosts/children) -> Topology."""
    c = _Checker(source)
    root = data.get("all") if isinstance(data, dict) else None
    if not isinstance(root, dict):
        c.fail("all", "expected a top-level 'all:' with vars, hosts and children")
    hostvars: dict[str, dict[str, Any]] = {}
    direct: dict[str, list[str]] = {}
    children: dict[str, list[str]] = {}
    _walk_group(c, "all", root, hostvars, direct, children)
    site = root.get("vars") or {}
    if not isinstance(site, dict):
        c.fail("all.vars", "must be a mapping of variables")
    return _from_parts(c, hostvars, _resolve(direct, children), site)


def from_listing(listing: Any, source: str) -> Topology:
    """The JSON of `ansible-inventory -i PATH --list` -> Topology.

    Variables arrive merged into each host (group_vars included); the site's variables must
    then agree on every machine of the stack.
    """
    c = _Checker(source)
    if not isinstance(listing, dict):
        c.fail("all", "ansible-inventory listed no groups")
    hostvars = (listing.get("_meta") or {}).get("hostvars") or {}
    direct: dict[str, list[str]] = {}
    children: dict[str, list[str]] = {}
    for group, body in listing.items():
        if group != "_meta" and isinstance(body, dict):
            direct[group] = [str(h) for h in body.get("hosts") or []]
            children[group] = [str(g) for g in body.get("children") or []]
    members = _resolve(direct, children)
    # the inventory's own order (groups and their hosts as written; hostvars come sorted)
    hosts = {name: dict(hostvars.get(name) or {}) for name in members.get("all", [])}
    for name, variables in hostvars.items():
        hosts.setdefault(str(name), dict(variables or {}))
    common = (listing.get("all") or {}).get("vars") or {}
    stack = {h for g in ROLE_GROUPS.values() for h in members.get(g, [])}
    site: dict[str, Any] = {}
    for key in SITE_VARS:
        values = {repr(hosts[n].get(key, common.get(key))): n for n in sorted(stack)}
        if len(values) > 1:
            c.fail(f"all.vars.{key}", f"hosts disagree ({', '.join(sorted(values.values()))} "
                                      "differ); set it once, in all.vars")
        value = hosts[min(stack)].get(key, common.get(key)) if stack else common.get(key)
        if value is not None:
            site[key] = value
    return _from_parts(c, hosts, members, site)


def _walk_group(c: _Checker, name: str, body: Any, hostvars: dict[str, dict[str, Any]],
                direct: dict[str, list[str]], children: dict[str, list[str]]) -> None:
    """One YAML group and its nested groups: hosts' variables merge, members are recorded."""
    key = "all" if name == "all" else f"all.children.{name}"
    body = body or {}
    if not isinstance(body, dict):
        c.fail(key, "must be a mapping with hosts, children or vars")
    hosts = body.get("hosts") or {}
    if not isinstance(hosts, dict):
        c.fail(f"{key}.hosts", "must be a mapping of host names to their variables")
    members = direct.setdefault(name, [])
    for host, variables in hosts.items():
        host_key = f"all.hosts.{host}"
        if not isinstance(host, str) or not host:
            c.fail(f"{key}.hosts", f"'{host}' is not a host name")
        if variables is not None and not isinstance(variables, dict):
            c.fail(host_key, "must be a mapping of variables")
        hostvars.setdefault(host, {}).update(variables or {})
        if host not in members:
            members.append(host)
    kids = body.get("children") or {}
    if not isinstance(kids, dict):
        c.fail(f"{key}.children", "must be a mapping of group names")
    for child, child_body in kids.items():
        children.setdefault(name, []).append(str(child))
        _walk_group(c, str(child), child_body, hostvars, direct, children)


def _resolve(direct: dict[str, list[str]], children: dict[str, list[str]]
             ) -> dict[str, list[str]]:
    """Each group's hosts, including those of its child groups (database = db_primary +
    db_replica), in the order first seen."""
    def members(group: str, seen: frozenset[str]) -> list[str]:
        found = list(direct.get(group, []))
        for child in children.get(group, []):
            if child not in seen:
                found += [h for h in members(child, seen | {group}) if h not in found]
        return found
    return {g: members(g, frozenset()) for g in {*direct, *children}}


def _from_parts(c: _Checker, hostvars: dict[str, dict[str, Any]],
                members: dict[str, list[str]], site: dict[str, Any]) -> Topology:
    for group in REQUIRED_GROUPS:
        if not members.get(group):
            c.fail(f"all.children.{group}", f"has no hosts; every stack needs "
                                            f"{', '.join(REQUIRED_GROUPS)}")
    machines: list[Machine] = []
    owner: dict[IPv4Address, str] = {}
    for name, hv in hostvars.items():
        roles = tuple(r for r, g in ROLE_GROUPS.items() if name in members.get(g, ()))
        if not roles:
            continue  # a host of the inventory that hastack does not run (a bastion, say)
        key = f"all.hosts.{name}"
        if "db-primary" in roles and "db-replica" in roles:
            c.fail(key, "is in both db_primary and db_replica; a node is one or the other")
        private = _inventory_address(c, f"{key}.hastack_private_address",
                                     hv.get("hastack_private_address"), required=True)
        public_needed = any(name in members.get(g, ()) for g in PUBLIC_GROUPS)
        public = _inventory_address(c, f"{key}.hastack_public_address",
                                    hv.get("hastack_public_address"), required=public_needed,
                                    why=" (load balancers and DNS sit on the public net)")
        for address in {private, public} - {None}:
            if address in owner:
                c.fail(key, f"address {address} is already used by {owner[address]}; "
                            "give each machine its own")
            owner[address] = name
        machines.append(Machine(name, roles, private, public))
    _check_roles(c, machines, "all.children")

    domain = c.string("all.vars.hastack_domain", _required(c, site, "hastack_domain"))
    aliases_raw = site.get("hastack_aliases", [])
    if not isinstance(aliases_raw, list):
        c.fail("all.vars.hastack_aliases", "must be a list of domain names")
    aliases = tuple(c.string(f"all.vars.hastack_aliases[{i}]", a)
                    for i, a in enumerate(aliases_raw))
    debug_headers = site.get("hastack_debug_headers", False)
    if not isinstance(debug_headers, bool):
        c.fail("all.vars.hastack_debug_headers", "must be true or false")
    public_net = _inventory_network(c, "hastack_public_net", site)
    private_net = _inventory_network(c, "hastack_private_net", site)
    admin = _inventory_address(c, "all.vars.hastack_admin_address",
                               site.get("hastack_admin_address"), required=True)
    lbs = [m for m in machines if "loadbalancer" in m.roles]
    vips = _inventory_vips(c, site.get("hastack_vips"), len(lbs), owner)
    derived_admin = private_net.network_address + 1
    return Topology(domain, aliases, public_net, private_net, tuple(machines), tuple(vips),
                    c.source, debug_headers, None if admin == derived_admin else admin)


def _required(c: _Checker, site: dict[str, Any], key: str) -> Any:
    if site.get(key) is None:
        c.fail(f"all.vars.{key}", "is missing")
    return site[key]


def _inventory_address(c: _Checker, key: str, value: Any, required: bool,
                       why: str = "") -> IPv4Address | None:
    if value is None:
        if required:
            c.fail(key, f"is missing{why}")
        return None
    try:
        address = ipaddress.ip_address(str(value))
    except ValueError:
        c.fail(key, f"'{value}' is not an IPv4 address")
    if not isinstance(address, IPv4Address):
        c.fail(key, f"'{value}' is not an IPv4 address")
    return address


def _inventory_network(c: _Checker, name: str, site: dict[str, Any]) -> IPv4Network:
    key = f"all.vars.{name}"
    value = c.string(key, _required(c, site, name))
    try:
        net = ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        c.fail(key, f"'{value}' is not a network like 192.0.2.0/24 ({exc})")
    if not isinstance(net, IPv4Network):
        c.fail(key, f"'{value}' is not an IPv4 network")
    return net


def _inventory_vips(c: _Checker, raw: Any, lb_count: int,
                    taken: dict[IPv4Address, str]) -> list[Vip]:
    key = "all.vars.hastack_vips"
    if not isinstance(raw, list) or len(raw) != lb_count:
        c.fail(key, f"must list one VIP (address, vrid) per load balancer: {lb_count} "
                    "load balancers")
    vips: list[Vip] = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            c.fail(f"{key}[{i}]", "must be a mapping with address and vrid")
        address = _inventory_address(c, f"{key}[{i}].address", item.get("address"), True)
        assert address is not None
        if address in taken:
            c.fail(f"{key}[{i}].address", f"{address} is the address of machine "
                                          f"{taken[address]}; a VIP must be an unused address")
        vrid = c.integer(f"{key}[{i}].vrid", item.get("vrid"), 1, 255)
        if any(v.address == address for v in vips):
            c.fail(f"{key}[{i}].address", f"duplicate virtual IP {address}")
        if any(v.vrid == vrid for v in vips):
            c.fail(f"{key}[{i}].vrid", f"duplicate virtual router id {vrid}; each VIP needs "
                                       "its own")
        vips.append(Vip(address, vrid))
    return vips
