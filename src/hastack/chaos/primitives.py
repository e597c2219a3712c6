"""Faults to inject, each returning the moment it took effect.

Services are killed, stopped and started on any Fleet (lab or real servers) over SSH. Lab
machines share the host's kernel, so CLOCK_MONOTONIC inside a machine is the host's: a fault
run over SSH reports its own time.monotonic(), and failover times are measured from the
instant of the fault, not from when SSH happened to connect. Pulling a plug or a cable needs
the lab's own hands (power_*, cut_link, restore_link).
"""

from __future__ import annotations

import time

from hastack.errors import HastackError
from hastack.fleet import Fleet
from hastack.lab import network
from hastack.lab.lab import Lab
from hastack.lab.machine import host_veth

_STAMP_AND_RUN = ("python3 -c 'import subprocess,sys,time; t=time.monotonic(); "
                  "r=subprocess.run(sys.argv[1:]); print(t); sys.exit(r.returncode)' ")


def remote_at(fleet: Fleet, machine: str, command: str) -> float:
    """Run a command on a machine; return the monotonic time at which it started there.

    Another machine's clock is not ours (real servers): then the time is ours just before
    SSH, so a failover measured from it also counts the connection (an upper bound).
    """
    sent = time.monotonic()
    out = fleet.run_checked(machine, _STAMP_AND_RUN + command, f"'{command}'")
    return float(out.strip().splitlines()[-1]) if fleet.shares_clock else sent


# Kill a unit's processes the instant after the stamp: through its cgroup's cgroup.kill
# (cgroup v2, pure or hybrid; the kernel kills forks racing with it too), which is one
# write. `systemctl kill` goes through systemd's bus and lands milliseconds after it was
# asked: it is the fallback for kernels without cgroup.kill. Nothing is killed after: the
# unit's ExecStopPost (HAProxy's tells keepalived) runs as it would after a crash. Then
# wait until every thread of every process killed has exited (gone or a zombie: its
# sockets are closed; a process's main thread can be a zombie while its other threads, which
# share its sockets, are still exiting: seen +2.2 ms vs +5.4 ms for HAProxy on lb1), and
# print both moments.
_KILL_UNIT = """python3 -c '
import os, subprocess, sys, time
unit = sys.argv[1]
cg = subprocess.run(["systemctl", "show", "-p", "ControlGroup", "--value", unit],
                    capture_output=True, text=True, check=True).stdout.strip()
roots = [cg and root + cg for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified")]
found = [d for d in roots if d and os.path.exists(d + "/cgroup.kill")]
pids = open(found[0] + "/cgroup.procs").read().split() if found else []
t = time.monotonic()
if found:
    with open(found[0] + "/cgroup.kill", "w") as f:
        f.write("1")
else:
    subprocess.run(["systemctl", "kill", "--signal=KILL", unit], check=True)
def state(path):
    try:
        return open(path).read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "X"
def alive(pid):
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return False
    return any(state(f"/proc/{pid}/task/{tid}/stat") not in "ZX" for tid in tids)
deadline = t + 10
while any(map(alive, pids)) and time.monotonic() < deadline:
    time.sleep(0.0002)
print(t, time.monotonic())
' """


def crash_service(fleet: Fleet, machine: str, unit: str) -> tuple[float, float]:
    """SIGKILL every process of a systemd unit (a crash, not a clean stop). Returns when the
    kill was sent and when its last process had exited: a connection that reached the
    daemon in between died with it (the kernel resets its listener's queue). Our clock;
    on a machine that does not share it, the moments SSH was started and returned."""
    sent = time.monotonic()
    out = fleet.run_checked(machine, _KILL_UNIT + unit, f"kill {unit}")
    if not fleet.shares_clock:
        return sent, time.monotonic()
    killed, gone = map(float, out.strip().splitlines()[-1].split())
    return killed, gone


def kill_service(fleet: Fleet, machine: str, unit: str) -> float:
    """crash_service; the moment the kill was sent."""
    return crash_service(fleet, machine, unit)[0]


def crash_mariadbd(fleet: Fleet, machine: str) -> float:
    """SIGKILL the node's mariadbd by its pid file, whoever runs it (systemd on a single DB
    node, the failover cluster otherwise)."""
    return remote_at(fleet, machine, "kill -KILL $(cat /run/mysqld/mysqld.pid)")


def hang_mariadbd(fleet: Fleet, machine: str) -> float:
    """SIGSTOP the node's mariadbd: it holds its connections and answers nothing (a hang:
    a deadlock inside the server looks the same from outside)."""
    return remote_at(fleet, machine, "kill -STOP $(cat /run/mysqld/mysqld.pid)")


def unhang_mariadbd(fleet: Fleet, machine: str) -> float:
    """SIGCONT whatever mariadbd the pid file names (nothing if the cluster killed it)."""
    return remote_at(fleet, machine, "sh -c 'kill -CONT $(cat /run/mysqld/mysqld.pid) "
                                     "2>/dev/null || true'")


def after_mariadbd_crash(fleet: Fleet, machine: str) -> float:
    """What an operator does after a crash: start it again if systemd runs it; under the
    cluster (mariadb.service disabled) nothing: the cluster restarts it as a replica."""
    return remote_at(fleet, machine, "sh -c 'systemctl is-enabled --quiet mariadb && "
                                     "systemctl start mariadb || true'")


def _no_restart_dropin(unit: str) -> str:
    return f"/run/systemd/system/{unit}.service.d/hastack-chaos-no-restart.conf"


def kill_and_keep_down(fleet: Fleet, machine: str, unit: str) -> float:
    """SIGKILL a unit and keep it dead until revive(): systemd would restart it (Debian's
    haproxy.service has Restart=always, 100 ms), so a crash would last too short to observe.
    The drop-in lives in /run: a reboot forgets it."""
    dropin = _no_restart_dropin(unit)
    fleet.run_checked(machine, f"mkdir -p {dropin.rsplit('/', 1)[0]} && "
                               f"printf '[Service]\\nRestart=no\\n' > {dropin} && "
                               "systemctl daemon-reload", f"keep {unit} down")
    return kill_service(fleet, machine, unit)


def revive(fleet: Fleet, machine: str, unit: str) -> float:
    """Undo kill_and_keep_down: the unit restarts as it normally would, and is started."""
    fleet.run_checked(machine, f"rm -f {_no_restart_dropin(unit)} && systemctl daemon-reload "
                               f"&& systemctl reset-failed {unit}; true", f"revive {unit}")
    return start_service(fleet, machine, unit)


def stop_service(fleet: Fleet, machine: str, unit: str) -> float:
    return remote_at(fleet, machine, f"systemctl stop {unit}")


def start_service(fleet: Fleet, machine: str, unit: str) -> float:
    return remote_at(fleet, machine, f"systemctl start {unit}")


def power_cut(lab: Lab, machine: str) -> tuple[float, float]:
    """Pull the plug: every cable out, then SIGKILL to every process of the machine (no
    clean shutdown). Returns the moments just before and just after the cables went out."""
    m = lab.machine(machine)
    window = m.unplug()
    if window is None:
        raise HastackError(f"{machine} has no cable to pull; is it running?")
    m.stop(graceful=False)
    return window


def power_off(lab: Lab, machine: str) -> float:
    """power_cut; the moment it started."""
    return power_cut(lab, machine)[0]


def power_on(lab: Lab, machine: str) -> float:
    t = time.monotonic()
    lab.start([machine])
    return t


def _link(machine: str, net: int, up: bool) -> float:
    name = host_veth(machine, net)
    window = network.set_links([name], up)
    if window is None:
        raise HastackError(f"{machine} has no link {name}; is it running?")
    return window[0]


def cut_link(machine: str, net: str = "public") -> float:
    """Unplug a machine's cable (host side of its veth down): its peers see silence."""
    return _link(machine, 0 if net == "public" else 1, up=False)


def restore_link(machine: str, net: str = "public") -> float:
    return _link(machine, 0 if net == "public" else 1, up=True)
