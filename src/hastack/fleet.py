"""One interface to machines, so operations (db, lb, status, chaos) work on any of them.

The lab is one way to get machines, an inventory of real servers the other. Both are a Fleet:
operations ask it for the topology, run commands on machines over SSH, and (after a database
switchover) ask it to record the new primary and redeploy. What only a lab knows -- a
machine's nspawn state, pulling its plug, unplugging its cable -- stays on Lab.

Commands are built as argv lists (Kamal's way): `ssh_argv` is pure and tested string by
string; `run_on` only executes what it built.
"""

from __future__ import annotations

import shlex
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import yaml
from rich.console import Console

from hastack import deploy, inventory, pki, topology
from hastack.errors import HastackError
from hastack.topology import Topology

Command = str | Sequence[str]
T = TypeVar("T")


def remote_command(command: Command) -> str:
    """The command line to give ssh for a command on a machine.

    ssh joins its arguments with spaces and the remote shell splits them again, so an argv of
    several words is quoted to arrive as it is. One string is a shell line, sent unchanged
    (pipes, `;` and $VARS keep working).
    """
    if isinstance(command, str):
        return command
    args = list(command)
    return args[0] if len(args) == 1 else shlex.join(args)


class Fleet(ABC):
    """Machines hastack operates, whoever made them."""

    inventory: Path  # the Ansible inventory a deploy of these machines uses
    secrets: Path    # this environment's generated secrets (CA, database passwords)
    # True when a machine's CLOCK_MONOTONIC is the controller's (lab machines share its
    # kernel), so a time measured there can be compared with one measured here.
    shares_clock = False
    # True when hastack holds the machines' power and cables (the lab): chaos may then pull
    # a plug or cut a link; on real servers only daemons can be killed.
    physical_faults = False

    @abstractmethod
    def require_topology(self) -> Topology:
        """The machines, their roles and addresses; a clear error if there are none."""

    @abstractmethod
    def ssh_argv(self, machine: str, command: Command | None = None) -> list[str]:
        """ssh to a machine, running `command` (see remote_command) or a login shell."""

    @abstractmethod
    def machine_state(self, name: str, monitoring: dict[str, Any]) -> str:
        """One word for `hastack status`'s `state` of a machine."""

    # Extra variables every deploy of these machines passes (real servers say so).
    deploy_vars: dict[str, Any] = {}

    def roll_site_build(self, build: str, console: Console) -> None:
        """Deploy the playbook with the site answering as build `build` (FOOBAR_BUILD): a new
        site version to every app server, rolled one at a time, as a release would be (only
        the app tier is deployed: `hastack deploy --limit app`)."""
        deploy.run(self.inventory, self.secrets, console,
                   extra_vars={**self.deploy_vars, "app_build": build}, limit="app")

    def settle_database(self, console: Console) -> None:
        """After a full deploy: a changed MariaDB configuration applied through the cluster,
        one node at a time (dbrestart.restart_pending), the same on the lab and on servers."""
        from hastack import dbrestart  # noqa: PLC0415 - it needs this module's Fleet

        dbrestart.restart_pending(self, console)

    def ca_cert(self) -> Path:
        """The CA a client passes to verify the site (`curl --cacert`)."""
        return pki.ca_cert_path(self.secrets)

    def run_on(self, machine: str, command: Command, timeout: float = 60,
               stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """Run a command on a machine over SSH: a shell line, or an argv that arrives word
        for word."""
        return subprocess.run(self.ssh_argv(machine, command), capture_output=True, text=True,
                              timeout=timeout, input=stdin if stdin is not None else "")

    def on_each(self, machines: Sequence[str], ask: Callable[[str], T]) -> list[T]:
        """ask(machine) for every machine at once, the answers in the machines' order: an
        operation that asks each DB node over SSH waits for the slowest, not for the sum
        (`hastack db status` on two nodes: 4 round trips one after another)."""
        if len(machines) < 2:
            return [ask(m) for m in machines]
        with ThreadPoolExecutor(len(machines)) as pool:
            return list(pool.map(ask, machines))

    def run_checked(self, machine: str, command: Command, what: str, timeout: float = 60,
                    stdin: str | None = None) -> str:
        """run_on, raising one clear error if the command fails; returns its stdout."""
        result = self.run_on(machine, command, timeout=timeout, stdin=stdin)
        if result.returncode != 0:
            detail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise HastackError(f"{machine}: {what} failed: {detail}")
        return result.stdout

    def status(self, monitoring: dict[str, Any] | None = None) -> dict[str, Any]:
        """`hastack status --json`'s contract keys (site, machines); `monitoring` is what
        status.collect() returned, for states that come from it."""
        topo = self.require_topology()
        dns = topo.with_role("dns")
        ca = self.ca_cert()
        machines = [{"name": m.name, "roles": list(m.roles), "addresses": m.addresses,
                     "state": self.machine_state(m.name, monitoring or {})}
                    for m in topo.machines]
        return {
            "site": {
                "domain": topo.domain,
                "aliases": list(topo.aliases),
                "vips": [str(v.address) for v in topo.vips],
                "dns": str(dns[0].public_address) if dns else None,
                "ca_cert": str(ca) if ca.exists() else None,
                "url": f"https://{topo.domain}/",
            },
            "inventory": str(self.inventory),
            "machines": machines,
        }


# ---- real servers -----------------------------------------------------------------------

SSH_DEFAULTS = ["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR"]
NODE_STATES = {True: "up", False: "down", None: "unknown"}


DATABASE_GROUPS = {"database", "db_primary", "db_replica"}


def _touches_database(limit: str, topo: Topology) -> bool:
    """Whether an Ansible --limit names DB nodes (their groups or names; no patterns)."""
    names = DATABASE_GROUPS | {m.name for m in topo.machines
                               if {"db-primary", "db-replica"} & set(m.roles)}
    return any(part.strip() in names for part in limit.replace(":", ",").split(","))


def _truthy(value: Any) -> bool:
    return value is True or str(value).lower() in ("yes", "true", "1", "on")


def server_ssh_argv(name: str, hostvars: dict[str, Any], command: Command | None = None
                    ) -> list[str]:
    """ssh to a server the way Ansible reaches it: ansible_host/_port/_user, the private key
    file and ansible_ssh_common_args; hastack's defaults come after, so the user's options
    win (ssh keeps the first value of each). With ansible_become and a user other than root,
    a command runs under `sudo -n` (operations need root, as the playbook's tasks do)."""
    argv = ["ssh"]
    if hostvars.get("ansible_port") is not None:
        argv += ["-p", str(hostvars["ansible_port"])]
    if hostvars.get("ansible_ssh_private_key_file"):
        argv += ["-i", str(Path(str(hostvars["ansible_ssh_private_key_file"])).expanduser())]
    argv += shlex.split(str(hostvars.get("ansible_ssh_common_args") or ""))
    argv += SSH_DEFAULTS
    user = hostvars.get("ansible_user")
    host = str(hostvars.get("ansible_host") or name)
    argv.append(f"{user}@{host}" if user else host)
    if not command:
        return argv
    line = remote_command(command)
    if _truthy(hostvars.get("ansible_become")) and user != "root":
        line = f"sudo -n -- sh -c {shlex.quote(line)}"
    return [*argv, "--", line]


def _lab_made(path: Path) -> bool:
    """Whether a YAML inventory is one `hastack up` wrote (all.vars.hastack_environment)."""
    if path.suffix not in (".yml", ".yaml"):
        return False
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        return False
    variables = ((data.get("all") or {}).get("vars") or {}) if isinstance(data, dict) else {}
    return variables.get("hastack_environment") == "lab"


class InventoryFleet(Fleet):
    """Servers listed in an Ansible inventory, reached over SSH as Ansible reaches them.

    The inventory is read through `ansible-inventory --list`, so group_vars, host_vars and
    INI or dynamic inventories all count; it is read once, when first needed.
    """

    deploy_vars = {"hastack_environment": "servers"}

    def __init__(self, path: Path, secrets: Path | None = None):
        inventory.check_file(path)
        self.inventory = path
        self._secrets_given = secrets is not None
        self.secrets = secrets or inventory.secrets_dir(path)
        self._listing: dict[str, Any] | None = None

    def listing(self) -> dict[str, Any]:
        if self._listing is None:
            self._listing = deploy.list_inventory(self.inventory)
        return self._listing

    def require_topology(self) -> Topology:
        return topology.from_listing(self.listing(), str(self.inventory))

    def hostvars(self, machine: str) -> dict[str, Any]:
        self.require_topology().machine(machine)  # a clear error for an unknown name
        return dict(((self.listing().get("_meta") or {}).get("hostvars") or {}).get(machine)
                    or {})

    def ssh_argv(self, machine: str, command: Command | None = None) -> list[str]:
        return server_ssh_argv(machine, self.hostvars(machine), command)

    def machine_state(self, name: str, monitoring: dict[str, Any]) -> str:
        """What monitoring says of the machine: node-exporter scraped (up), failing (down),
        or not known (no monitoring, or not scraped yet). hastack did not make these
        machines, so it has no power state of its own to report."""
        seen = (monitoring.get("machines") or {}).get(name) or {}
        return NODE_STATES[(seen.get("scrapes") or {}).get("node")]

    def deploy(self, console: Console, limit: str | None = None) -> dict[str, Any]:
        """The real-server deploy (`hastack deploy -i`): the lab's playbook, this inventory."""
        if not self._secrets_given and _lab_made(self.inventory):
            # its secrets are the lab's: new ones made beside the file would re-key every
            # database user on the lab's machines (it happened once, silently)
            raise HastackError(f"{self.inventory}: is a lab's inventory (hastack_environment: "
                               "lab); deploy it with the lab's secrets: --secrets-dir "
                               f"{self.inventory.resolve().parent / 'secrets'} (or 'hastack up')")
        # One ansible-inventory per deploy (1-3 s each): the playbook's reading serves the
        # deploy and, cached, the topology the database settling needs afterwards.
        self._listing = deploy.read_inventory(self.inventory, self.secrets)
        done = deploy.run(self.inventory, self.secrets, console,
                          extra_vars=self.deploy_vars, limit=limit, listing=self._listing)
        if limit is None or _touches_database(limit, self.require_topology()):
            self.settle_database(console)
        return done
