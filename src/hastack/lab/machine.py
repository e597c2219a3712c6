"""A lab machine: a systemd-nspawn container booted from a copy-on-write overlay of the image.

Each machine runs in its own cgroup (hs-NAME, in the systemd and unified hierarchies) so that
every process it owns can be found, and ended by PID, even after the `hastack up` that started
it was killed. Where the host has cgroup v1's cpu controller, hs-NAME there too: the host's
cores are shared machine by machine, as separate servers would have their own, instead of
process by process (a fenced node booting back started dozens of processes at once and
slowed every other machine's requests for a second). Its overlay is mounted in a private
mount namespace, so it vanishes with the machine and never shows on the host.
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from hastack.errors import HastackError
from hastack.lab import network
from hastack.topology import Machine, Topology

CGROUP_ROOTS = (Path("/sys/fs/cgroup/systemd"), Path("/sys/fs/cgroup/unified"),
                Path("/sys/fs/cgroup/cpu"))
PUBLIC_IF = "pub"
PRIVATE_IF = "priv"
POLL = 0.02  # seconds between looks at processes on their way out
KILL_TIMEOUT = 5.0  # for SIGKILLed processes to finish exiting

# A process as (PID, start time in clock ticks since boot): a PID alone may be reused.
Process = tuple[int, int]


def host_veth(name: str, net: int) -> str:
    """Host side of a machine's link: hs-NAME-0 (public) or hs-NAME-1 (private), ≤15 chars."""
    return f"hs-{name}-{net}"


def cgroup_name(name: str) -> str:
    return f"hs-{name}"


def _network_file(ifname: str, address: str, prefix: int) -> str:
    return (f"[Match]\nName={ifname}\n\n[Network]\nAddress={address}/{prefix}\n"
            "LinkLocalAddressing=no\nIPv6AcceptRA=no\n")


class LabMachine:
    def __init__(self, machine: Machine | None, topo: Topology | None, lab_dir: Path,
                 name: str | None = None):
        """machine/topo may be None for a machine known only by its cgroup (its state is
        gone after a crash): enough to find and stop its processes."""
        self.machine = machine
        self.topo = topo
        self.name = machine.name if machine else str(name)
        self.dir = lab_dir / "machines" / self.name
        self.upper = self.dir / "upper"
        self.work = self.dir / "work"
        self.merged = self.dir / "root"
        self.console = self.dir / "console.log"
        self.pidfile = self.dir / "pid"

    # ---- preparing the overlay -----------------------------------------------------------
    def prepare(self, authorized_key: str) -> None:
        """Write the machine's identity into its overlay before its first boot."""
        if (self.dir / "prepared").exists():
            return
        for d in (self.upper, self.work, self.merged):
            d.mkdir(parents=True, exist_ok=True)
        up = self.upper
        (up / "etc/systemd/network").mkdir(parents=True, exist_ok=True)
        (up / "etc/hostname").write_text(self.name + "\n")
        hosts = ["127.0.0.1 localhost", f"127.0.1.1 {self.name}"]
        hosts += [f"{m.private_address} {m.name}" for m in self.topo.machines]
        (up / "etc/hosts").write_text("\n".join(hosts) + "\n")
        m = self.machine
        if m.public_address is not None:
            (up / "etc/systemd/network/10-pub.network").write_text(
                _network_file(PUBLIC_IF, str(m.public_address), self.topo.public_net.prefixlen))
        (up / "etc/systemd/network/20-priv.network").write_text(
            _network_file(PRIVATE_IF, str(m.private_address), self.topo.private_net.prefixlen))
        ssh = up / "root/.ssh"
        ssh.mkdir(parents=True, exist_ok=True)
        ssh.chmod(0o700)
        (ssh / "authorized_keys").write_text(authorized_key)
        (ssh / "authorized_keys").chmod(0o600)
        (up / "etc/ssh").mkdir(parents=True, exist_ok=True)
        key = up / "etc/ssh/ssh_host_ed25519_key"
        if not key.exists():
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", self.name,
                            "-f", str(key)], check=True)
        (self.dir / "prepared").write_text("")

    def host_key(self) -> str:
        return (self.upper / "etc/ssh/ssh_host_ed25519_key.pub").read_text().split()[1]

    # ---- processes -----------------------------------------------------------------------
    def _cgroups(self) -> list[Path]:
        return [root / cgroup_name(self.name) for root in CGROUP_ROOTS if root.is_dir()]

    def pids(self) -> list[int]:
        """Every process of this machine, from its cgroups (sub-cgroups included)."""
        return cgroup_pids(self._cgroups())

    def processes(self) -> list[Process]:
        """The machine's processes now, and its nspawn if that is a zombie by now: nspawn's
        parent is init (the `up` that started it has exited), which may reap it later."""
        pids = set(self.pids())
        with contextlib.suppress(OSError, ValueError):
            pid = int(self.pidfile.read_text())
            if in_cgroups(pid, self._cgroups()):
                pids.add(pid)
        return [p for p in map(identify, sorted(pids)) if p is not None]

    def running(self) -> bool:
        return bool(self.pids())

    def start(self, image_root: Path) -> None:
        """Boot the machine on the image its disk was made from (a newer image is for new
        machines; an overlay must keep the lower layer it was written against)."""
        if self.running():
            return
        recorded = self.dir / "image"
        if recorded.exists() and Path(recorded.read_text()).is_dir():
            image_root = Path(recorded.read_text())
        else:
            recorded.write_text(str(image_root))
        self._remove_cgroups()
        # A machine killed a moment ago may still have its host-side veths (the kernel frees
        # them with the network namespace, asynchronously); nspawn cannot reuse the names.
        for net in (0, 1):
            network.remove_link(host_veth(self.name, net))
        for cg in self._cgroups():
            cg.mkdir(exist_ok=True)
        has_public = self.machine.public_address is not None
        nspawn = [
            "systemd-nspawn", "-D", str(self.merged), "-M", self.name, f"--hostname={self.name}",
            "--register=no", "--keep-unit", "--boot", "--console=pipe", "--link-journal=no",
            "--resolv-conf=off", "--timezone=off",
            # The host's hard limit (20000 here) caps this; HAProxy and MariaDB need > 1024.
            f"--rlimit=NOFILE={_nofile_hard()}",
        ]
        if has_public:
            nspawn.append(f"--network-veth-extra={host_veth(self.name, 0)}:{PUBLIC_IF}")
        nspawn.append(f"--network-veth-extra={host_veth(self.name, 1)}:{PRIVATE_IF}")
        script = ('mount -t overlay overlay -o "lowerdir=$1,upperdir=$2,workdir=$3" "$4" '
                  '&& shift 4 && exec "$@"')
        cmd = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
               str(image_root), str(self.upper), str(self.work), str(self.merged), *nspawn]
        cgroups = [cg / "cgroup.procs" for cg in self._cgroups()]

        def join_cgroups() -> None:  # runs in the child, before exec
            for procs in cgroups:
                procs.write_text(str(os.getpid()))

        with self.console.open("ab") as log:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True,
                                    preexec_fn=join_cgroups)
        self.pidfile.write_text(str(proc.pid))
        # A long-lived starter (the lab's fence device) reaps nspawn as soon as it exits: a
        # zombie counts as not gone yet, and the next power-off waited 5 s for it.
        threading.Thread(target=proc.wait, daemon=True).start()
        try:
            if has_public:
                network.attach(host_veth(self.name, 0), network.PUBLIC_BRIDGE)
            network.attach(host_veth(self.name, 1), network.PRIVATE_BRIDGE)
        except HastackError:
            if proc.poll() is not None:
                tail = self.console.read_text(errors="replace").strip().splitlines()[-1:]
                raise HastackError(f"machine {self.name} did not start: "
                                   f"{tail[0] if tail else 'no output'} "
                                   f"(see {self.console})") from None
            raise

    def request_poweroff(self) -> None:
        """SIGTERM to nspawn: it asks the machine's systemd to power off cleanly."""
        leader = self._leader()
        if leader:
            _signal(leader, signal.SIGTERM)

    def stop(self, timeout: float = 10.0, graceful: bool = True) -> None:
        """Power the machine off (SIGTERM to nspawn), or pull the plug (SIGKILL, by PID)."""
        stop_machines([self], graceful, timeout)

    def unplug(self) -> tuple[float, float] | None:
        """Every cable out at once (host-side veths down); the moments before and after, or
        None if it has none. A real power cut silences a machine in an instant; SIGKILL to
        its processes takes tens of milliseconds, during which the dying kernel still
        answers: connections reset, handshakes refused."""
        return network.set_links([host_veth(self.name, net) for net in (0, 1)], up=False)

    def _leader(self) -> int | None:
        """The nspawn process; without a pid file, the oldest process of the top cgroup."""
        pids = self.pids()
        try:
            pid = int(self.pidfile.read_text())
            return pid if pid in pids else None
        except (OSError, ValueError):
            top = [p for cg in self._cgroups() if (cg / "cgroup.procs").exists()
                   for p in map(int, (cg / "cgroup.procs").read_text().split())]
            return min(top) if top else None

    def _remove_cgroups(self) -> None:
        for cg in self._cgroups():
            for dirpath, _dirs, _files in os.walk(cg, topdown=False, onerror=lambda _err: None):
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(dirpath)

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def memory_bytes(self) -> int:
        """Proportional set size of the machine's processes (shared pages counted once)."""
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
            except OSError:
                continue
        return total


def stop_machines(machines: Sequence[LabMachine], graceful: bool = True,
                  timeout: float = 10.0) -> None:
    """Power machines off together; return only once every process of theirs is gone.

    A clean power-off (one SIGTERM to each nspawn) gets `timeout` seconds, then whatever is
    left in their cgroups gets SIGKILL. A pulled plug takes every cable out first. The
    cgroups go last: rmdir needs them empty.
    """
    cgroups = [cg for m in machines for cg in m._cgroups()]
    procs = [p for m in machines for p in m.processes()]
    for m in machines:
        if graceful:
            m.request_poweroff()
        else:
            m.unplug()
    if graceful:
        wait_gone(cgroups, procs, timeout)
    deadline = time.monotonic() + KILL_TIMEOUT
    while not gone(cgroups, procs) and time.monotonic() < deadline:
        kill_cgroups(cgroups)
        time.sleep(POLL)
    # A zombie that init has not reaped by now is dead all the same; a live process is not.
    if any(map(populated, cgroups)):
        raise HastackError(f"processes {', '.join(map(str, cgroup_pids(cgroups)))} of the lab "
                           f"survived SIGKILL for {KILL_TIMEOUT:.0f} s; run the command again")
    for m in machines:
        m._remove_cgroups()
        m.pidfile.unlink(missing_ok=True)


def cgroup_pids(cgroups: Iterable[Path]) -> list[int]:
    """Every process in these cgroups, sub-cgroups included.

    A machine may be shutting down while we look: cgroups vanish under the walk.
    """
    found: set[int] = set()
    for cg in cgroups:
        for dirpath, _dirs, files in os.walk(cg, onerror=lambda _err: None):
            if "cgroup.procs" not in files:
                continue
            try:
                found.update(int(p) for p in Path(dirpath, "cgroup.procs").read_text().split())
            except OSError:
                continue
    return sorted(found)


def populated(cg: Path) -> bool:
    """Whether a process of the cgroup tree is alive or still exiting (a gone cgroup: no).

    cgroup v2 keeps one flag for the whole tree, cleared only once its last process is dead;
    v1 has only the lists of processes.
    """
    try:
        return "populated 1" in (cg / "cgroup.events").read_text().splitlines()
    except FileNotFoundError:
        return bool(cgroup_pids([cg]))


def identify(pid: int) -> Process | None:
    """(pid, start time) of a live or zombie process; None if there is no such PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return pid, int(stat[stat.rindex(")") + 2:].split()[19])


def gone(cgroups: Sequence[Path], procs: Iterable[Process]) -> bool:
    """No process left in `cgroups`, and each of `procs` reaped (not merely a zombie)."""
    return not any(map(populated, cgroups)) and all(identify(p[0]) != p for p in procs)


def wait_gone(cgroups: Sequence[Path], procs: Iterable[Process], timeout: float) -> bool:
    """Poll until gone(cgroups, procs); False if that took longer than `timeout` seconds."""
    procs = list(procs)
    deadline = time.monotonic() + timeout
    while not gone(cgroups, procs):
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL)
    return True


def in_cgroups(pid: int, cgroups: Sequence[Path]) -> bool:
    """Whether a process is in one of these cgroups (each at the top of its hierarchy, as a
    lab machine's are) or below."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return False
    tops = {f"/{cg.name}" for cg in cgroups}
    paths = [line.split(":", 2)[-1] for line in lines]
    return any(p == top or p.startswith(top + "/") for p in paths for top in tops)


def kill_cgroups(cgroups: Sequence[Path]) -> None:
    """SIGKILL every process in these cgroups, and nothing else.

    A pidfd holds on to the process found by PID, so a PID reused after the lookup is not
    signalled unless that new process is in these cgroups too.
    """
    for pid in cgroup_pids(cgroups):
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            if in_cgroups(pid, cgroups):
                signal.pidfd_send_signal(fd, signal.SIGKILL)
        except ProcessLookupError:
            pass
        finally:
            os.close(fd)


def _nofile_hard() -> int:
    return resource.getrlimit(resource.RLIMIT_NOFILE)[1]


def _signal(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def all_lab_cgroups() -> list[str]:
    """Machine names of every hs-* cgroup on the host, whatever state file exists."""
    names: set[str] = set()
    for root in CGROUP_ROOTS:
        if root.is_dir():
            names.update(p.name[3:] for p in root.glob("hs-*") if p.is_dir())
    return sorted(names)


def require_tools() -> None:
    for tool, package in (("systemd-nspawn", "systemd-container"), ("ssh-keygen", "openssh-client"),
                          ("ssh", "openssh-client"), ("unshare", "util-linux")):
        if shutil.which(tool) is None:
            raise HastackError(f"{tool} not found; install the Debian package {package} "
                               f"(apt-get install {package}) or run 'make up'")
