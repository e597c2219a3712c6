"""The lab as a whole: bring the topology's machines up, deploy them, take everything down.

State lives in one directory (lab.json records the topology in force *before* anything is
created, so a crashed or killed `up` can always be repaired by the next `up` or `down`).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml
from rich.console import Console

from hastack import db, deploy, inventory, paths, pki, siteclient, topology, ui, wheelhouse
from hastack.errors import HastackError
from hastack.fleet import Fleet, remote_command
from hastack.lab import image, network, redfish
from hastack.lab.machine import LabMachine, all_lab_cgroups, require_tools, stop_machines
from hastack.topology import Topology

# The lab's fence device for its DB nodes: a Redfish endpoint on the host's private address,
# driven by the same fence_redfish agent real servers' BMCs answer (docs/operations.md).
FENCE_PORT = 8443
FENCE_USER = "hastack-fence"


def require_root(what: str, why: str = "it creates network bridges and containers") -> None:
    if os.geteuid() != 0:
        raise HastackError(f"hastack {what} must run as root ({why}); run it with sudo")


__all__ = ["Lab", "prepare_caches", "remote_command", "require_root", "wait_site"]


def ensure_image(console: Console) -> Path:
    """The cached lab image's rootfs, built first if its recipe changed (up and prepare)."""
    with ui.status(console, "lab image") as status:
        return image.ensure_image(lambda msg: status.update(f"lab image: {msg}"))


def prepare_caches(topo: Topology, console: Console) -> None:
    """Build the caches `up` of this topology uses, with its own calls (so the same keys),
    and nothing else (no machine, bridge or lab state): the image and the deploy's
    wheelhouses. CI builds them while the unit tests run; the later `up` finds them ready."""
    require_root("prepare", "it builds the lab image with debootstrap and chroot")
    ensure_image(console)
    # the lab's inventory has a monitoring group with hosts exactly when the topology has
    # monitoring machines (inventory.build), which is what deploy.run asks
    deploy.wheelhouses(console, monitoring=bool(topo.with_role("monitoring")))


class Lab(Fleet):
    """The lab's machines: it makes them (up/stop/start/down) and is the Fleet that reaches
    them.

    A subclass rather than a wrapper: the lab already is the one place that knows its
    machines' topology (lab.json), SSH key and known hosts, so wrapping it would only forward
    every call; and scripts (bench/, tests) keep calling lab.run_on and friends unchanged.
    Operations themselves (db, lb, status, chaos) live outside and see only a Fleet.
    """

    shares_clock = True  # nspawn machines run on the host's kernel
    physical_faults = True  # power_off/cut_link in hastack.chaos

    def __init__(self, root: Path | None = None):
        self.dir = root or paths.lab_dir()
        self.state_file = self.dir / "lab.json"
        self.ssh_key = self.dir / "ssh" / "id_ed25519"
        self.known_hosts = self.dir / "ssh" / "known_hosts"
        self.inventory = self.dir / "inventory.yml"
        self.secrets = self.dir / "secrets"
        self.deployed = self.dir / "deployed"
        self.fence_password = self.secrets / "fence_password"
        self.fence_pidfile = self.dir / "redfish.pid"

    # ---- state ---------------------------------------------------------------------------
    def topology(self) -> Topology | None:
        if not self.state_file.exists():
            return None
        try:
            recorded = json.loads(self.state_file.read_text())["topology"]
            return topology.parse(recorded, str(self.state_file))
        except (HastackError, ValueError, KeyError, TypeError) as exc:
            raise HastackError(f"the running lab's record does not fit this version of hastack "
                               f"({' '.join(str(exc).split())}); run 'hastack down', then "
                               "'hastack up'") from None

    def require_topology(self) -> Topology:
        topo = self.topology()
        if topo is None:
            raise HastackError("no lab is up; run 'hastack up' first")
        return topo

    def machine(self, name: str) -> LabMachine:
        topo = self.require_topology()
        return LabMachine(topo.machine(name), topo, self.dir)

    def machines(self, topo: Topology) -> list[LabMachine]:
        return [LabMachine(m, topo, self.dir) for m in topo.machines]

    # ---- up ------------------------------------------------------------------------------
    def up(self, topo: Topology, console: Console, force_deploy: bool = False) -> None:
        require_root("up")
        require_tools()
        previous = self.topology()
        network.check_conflicts(topo, owned=set(network.lab_links()) if previous else set())
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.dir.chmod(0o700)

        if previous is not None:
            self._retire_changed(previous, topo, console)
        # Record intent first: whatever happens next, down/up know what may exist.
        self._record(topo)

        root = ensure_image(console)
        self._ensure_ssh_key()
        network.ensure_bridges(topo)

        to_start = [m for m in self.machines(topo) if not m.running()]
        if to_start:
            # A machine that boots must be deployed, even if this run is killed before that.
            self.deployed.unlink(missing_ok=True)
            with ui.status(console, "starting machines") as status:
                for m in to_start:
                    status.update(f"starting {m.name}")
                    m.prepare(self.ssh_key.with_suffix(".pub").read_text())
                    m.start(root)
            console.print(f"started {', '.join(m.name for m in to_start)}")
        self._write_known_hosts(topo)
        self._write_inventory(topo)
        with ui.status(console, "waiting for SSH on every machine"):
            self._wait_ssh(topo)

        # Read once: for the certificates here and for the deploy (1-3 s per reading).
        listing = deploy.read_inventory(self.inventory, self.secrets)
        # Certificates close to expiry are renewed now, and a renewal counts as a change.
        deploy.ensure_tls(self.inventory, self.secrets, listing=listing)
        self._ensure_fence_device(topo)
        unchanged = self.deployed.exists() and self.deployed.read_text() == self._fingerprint()
        if force_deploy or not unchanged:
            self._deploy(console, listing)
        else:
            console.print("deploy: nothing changed since the last deploy")
        with ui.status(console, "waiting for the site on every virtual IP"):
            wait_site(topo, self.ca_cert())

    def _retire_changed(self, previous: Topology, topo: Topology, console: Console) -> None:
        """Destroy machines that left the topology or whose addresses changed.

        A change of roles alone keeps the machine (and its data): the deploy converges it.
        """
        wanted = {m.name: m.addresses for m in topo.machines}
        for m in previous.machines:
            if wanted.get(m.name) != m.addresses:
                console.print(f"removing {m.name} (not in the new topology as it was)")
                LabMachine(m, previous, self.dir).destroy()
        if (previous.public_net, previous.private_net) != (topo.public_net, topo.private_net):
            network.remove_links()

    def _record(self, topo: Topology) -> None:
        self.state_file.write_text(json.dumps({"topology": topo.to_dict()}, indent=2))

    def _deploy(self, console: Console, listing: dict[str, Any] | None = None) -> None:
        """Run the playbook; the lab counts as deployed only once it succeeded."""
        self.deployed.unlink(missing_ok=True)
        deploy.run(self.inventory, self.secrets, console, listing=listing)
        self.settle_database(console)
        self.deployed.write_text(self._fingerprint())

    def _fenced(self, topo: Topology) -> list[str]:
        """The DB nodes, when they form a failover cluster (which fences)."""
        nodes = db.db_nodes(topo)
        return nodes if len(nodes) >= 2 else []

    def _ensure_fence_password(self) -> str:
        if not self.fence_password.exists():
            self.secrets.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(self.fence_password, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_urlsafe(24) + "\n")
        return self.fence_password.read_text().strip()

    def _ensure_fence_device(self, topo: Topology) -> None:
        """Run the Redfish endpoint the DB nodes' fence_redfish drives (restarted when the
        set of DB nodes changed: it serves exactly those)."""
        nodes = self._fenced(topo)
        redfish.stop_daemon(self.fence_pidfile)
        if not nodes:
            return
        cert, key = pki.ensure_host_service(self.secrets, topo.domain, "lab-fence",
                                            [str(topo.host_private)])
        self._ensure_fence_password()
        redfish.start_daemon(lab_dir=self.dir, address=str(topo.host_private), port=FENCE_PORT,
                             cert=cert, key=key, user=FENCE_USER,
                             password_file=self.fence_password, systems=nodes,
                             log=self.dir / "redfish.log", pidfile=self.fence_pidfile)

    def _fence_vars(self, topo: Topology) -> dict[str, Any]:
        """Each DB node's fence device (hastack_fence) and the flow to it."""
        nodes = self._fenced(topo)
        if not nodes:
            return {}
        password = self._ensure_fence_password()
        hosts = {name: {"hastack_fence": {"agent": "fence_redfish", "params": {
            "ip": str(topo.host_private), "ipport": FENCE_PORT, "username": FENCE_USER,
            "password": password, "systems_uri": f"/redfish/v1/Systems/{name}",
            "pcmk_host_argument": "none"}}} for name in nodes}
        flow = {"name": "fence-from-db", "from": "database", "to": "admin", "proto": "tcp",
                "ports": [FENCE_PORT]}
        return {"hosts": hosts, "vars": {"firewall_extra_flows": [flow]}}

    def _ensure_ssh_key(self) -> None:
        if self.ssh_key.exists():
            return
        self.ssh_key.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hastack-lab",
                        "-f", str(self.ssh_key)], check=True)

    def _write_known_hosts(self, topo: Topology) -> None:
        lines = []
        for m in self.machines(topo):
            key = m.host_key()
            lines.append(f"{m.name},{m.machine.private_address} ssh-ed25519 {key}")
        self.known_hosts.write_text("\n".join(lines) + "\n")

    def ssh_options(self) -> list[str]:
        return ["-i", str(self.ssh_key), "-o", f"UserKnownHostsFile={self.known_hosts}",
                "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
                "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"]

    def ssh_argv(self, machine: str, command: str | Sequence[str] | None = None) -> list[str]:
        """ssh to a lab machine as root, running `command` (see remote_command) or a shell.

        `--` ends ssh's options, which it would otherwise also look for after the host.
        """
        m = self.require_topology().machine(machine)
        argv = ["ssh", *self.ssh_options(), f"root@{m.private_address}"]
        return [*argv, "--", remote_command(command)] if command else argv

    def _write_inventory(self, topo: Topology) -> None:
        connection = {
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(self.ssh_key),
            "ansible_ssh_common_args": f"-o UserKnownHostsFile={self.known_hosts} "
                                       "-o StrictHostKeyChecking=yes",
            "ansible_python_interpreter": "/usr/bin/python3",
            # The lab's own load generator and tests (the host's public address) are not
            # rate-limited or banned; abuse tests use other client addresses.
            "hastack_trusted_clients": [f"{topo.host_public}/32"],
        }
        data = inventory.build(topo, connection)
        fence = self._fence_vars(topo)
        for name, hostvars in fence.get("hosts", {}).items():
            data["all"]["hosts"][name].update(hostvars)
        data["all"]["vars"].update(fence.get("vars", {}))
        self.inventory.write_text(yaml.safe_dump(data, sort_keys=False))

    def _wait_ssh(self, topo: Topology, timeout: float = 60.0) -> None:
        pending = {m.name: str(m.private_address) for m in topo.machines}
        deadline = time.monotonic() + timeout
        while pending:
            for name, addr in list(pending.items()):
                if _ssh_banner(addr):
                    del pending[name]
            if pending and time.monotonic() > deadline:
                raise HastackError(f"no SSH from {', '.join(sorted(pending))} after "
                                   f"{timeout:.0f} s; see {self.dir}/machines/*/console.log")
            if pending:
                time.sleep(0.1)

    def _fingerprint(self) -> str:
        """What a deploy depends on: inventory, playbook, site sources, hastack's own sources
        (the status page), certificates, image."""
        digest = hashlib.sha256(self.inventory.read_bytes())
        for f in sorted(pki.tls_dir(self.secrets).glob("*")):
            digest.update(f.name.encode())
            digest.update(f.read_bytes())
        for f in sorted(paths.ANSIBLE_DIR.rglob("*")):
            if f.is_file() and "__pycache__" not in f.parts:
                digest.update(str(f).encode())
                digest.update(f.read_bytes())
        digest.update(wheelhouse.site_hash().encode())
        digest.update(wheelhouse.monitoring_hash().encode())
        digest.update(image.image_key().encode())
        return digest.hexdigest()

    # ---- stop / down ---------------------------------------------------------------------
    def stop(self, names: Iterable[str] | None = None, graceful: bool = True) -> list[str]:
        require_root("stop")
        topo = self.require_topology()
        chosen = set(names) if names else {m.name for m in topo.machines}
        for name in chosen:
            topo.machine(name)
        machines = [m for m in self.machines(topo) if m.name in chosen]
        stop_machines(machines, graceful)
        return sorted(chosen)

    def start(self, names: Iterable[str]) -> None:
        require_root("start")
        root = image.image_root()
        for name in names:
            self.machine(name).start(root)

    def down(self) -> None:
        require_root("down")
        try:
            topo = self.topology()
        except HastackError:
            topo = None  # an unreadable record: its machines are found by their cgroups
        machines = self.machines(topo) if topo else []
        known = {m.name for m in machines}
        # Leftovers of a crash whose state file is gone still have their cgroups.
        for name in all_lab_cgroups():
            if name not in known:
                machines.append(LabMachine(None, None, self.dir, name=name))
        deploy.close_connections(self.secrets)
        redfish.stop_daemon(self.fence_pidfile)
        stop_machines(machines, graceful=True)
        network.remove_links()
        shutil.rmtree(self.dir, ignore_errors=True)
        image.prune_unused()  # no machine is left on an older image

    # ---- status --------------------------------------------------------------------------
    def machine_state(self, name: str, monitoring: dict[str, Any]) -> str:
        """The machine's container: running or stopped (what the lab itself knows)."""
        return "running" if self.machine(name).running() else "stopped"

    def status(self, monitoring: dict[str, Any] | None = None) -> dict[str, Any]:
        if self.topology() is None:
            return {"site": None, "machines": [], "lab": "down"}
        return {**super().status(monitoring), "lab": "up"}


def _ssh_banner(address: str) -> bool:
    try:
        with socket.create_connection((address, 22), timeout=0.5) as s:
            s.settimeout(1.0)
            return s.recv(4).startswith(b"SSH-")
    except OSError:
        return False


def wait_site(topo: Topology, ca_file: Path, timeout: float = 60.0) -> None:
    """Poll every VIP until the site answers over verified HTTPS (the end of a successful
    `up`)."""
    pending = [str(v.address) for v in topo.vips]
    deadline = time.monotonic() + timeout
    last = ""
    while pending:
        for vip in list(pending):
            try:
                r = siteclient.get(vip, topo.domain, "/healthz", ca_file, timeout=2.0)
                if r.status_code < 500:
                    pending.remove(vip)
                    continue
                last = f"HTTP {r.status_code}"
            except httpx.HTTPError as exc:
                last = str(exc) or type(exc).__name__
        if pending and time.monotonic() > deadline:
            raise HastackError(f"the site does not answer on {', '.join(pending)} after "
                               f"{timeout:.0f} s ({last})")
        if pending:
            time.sleep(0.2)
