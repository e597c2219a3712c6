"""Stopping machines waits for their processes to be gone, and kills nothing but theirs.

Real processes, all started here; with root, in a throwaway cgroup /sys/fs/cgroup/unified/
hs-test-* (removed afterwards), otherwise against PIDs only.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from hastack.lab import machine
from hastack.lab.machine import LabMachine, cgroup_pids, identify, kill_cgroups, wait_gone

UNIFIED = Path("/sys/fs/cgroup/unified")


def _sleeper(cgroup: Path | None = None, ignore_term: bool = False) -> subprocess.Popen[str]:
    """A process that lives 30 s, in `cgroup` from its first instruction; started once ready."""
    code = ("import signal, time\n"
            f"if {ignore_term}: signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
            "print('ready', flush=True)\ntime.sleep(30)")
    join = (lambda: (cgroup / "cgroup.procs").write_text(str(os.getpid()))) if cgroup else None
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            preexec_fn=join)
    assert proc.stdout.readline() == "ready\n"
    return proc


def _end(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        p.kill()
        p.wait()
        p.stdout.close()


@pytest.fixture
def ours() -> Iterator[list[subprocess.Popen[str]]]:
    """Processes a test started: whatever happens, killed and reaped at the end."""
    procs: list[subprocess.Popen[str]] = []
    yield procs
    _end(procs)


@pytest.fixture
def cgroup(ours) -> Iterator[Path]:
    cg = UNIFIED / f"hs-test-{uuid.uuid4().hex[:8]}"
    try:
        cg.mkdir()
    except OSError as exc:
        pytest.skip(f"cannot create a cgroup here ({exc}); the PID-only tests still run")
    yield cg
    _end(ours)  # a cgroup can be removed only once its processes are dead
    with contextlib.suppress(FileNotFoundError):
        cg.rmdir()


@pytest.fixture
def lab_machine(cgroup, tmp_path: Path) -> LabMachine:
    """A machine known only by its cgroup (as after a crash), its state in tmp_path."""
    m = LabMachine(None, None, tmp_path, name=cgroup.name.removeprefix("hs-"))
    assert cgroup in m._cgroups()
    m.dir.mkdir(parents=True)
    return m


def _reap_later(proc: subprocess.Popen[str], delay: float) -> None:
    """Play init: reap an exited process a little later, as a slow init would."""
    threading.Timer(delay, proc.wait).start()


def test_a_process_is_gone_once_reaped_not_once_a_zombie(ours):
    ours.append(p := _sleeper())
    me = identify(p.pid)
    assert not wait_gone([], [me], 0.1)
    p.kill()
    time.sleep(0.1)
    assert Path(f"/proc/{p.pid}/stat").read_text().split(") ")[1][0] == "Z"
    assert not wait_gone([], [me], 0.1)
    _reap_later(p, 0.3)
    t = time.monotonic()
    assert wait_gone([], [me], 30)
    assert 0.25 < time.monotonic() - t < 4  # polled: returned soon after the reap


def test_a_reused_pid_is_not_waited_for():
    pid, start = identify(os.getpid())
    t = time.monotonic()
    assert wait_gone([], [(pid, start - 1)], 10)
    assert time.monotonic() - t < 0.5


def test_a_cgroup_is_waited_for_and_only_its_processes_are_killed(ours, cgroup):
    ours.append(inside := _sleeper(cgroup))
    ours.append(bystander := _sleeper())
    assert cgroup_pids([cgroup]) == [inside.pid]
    assert not wait_gone([cgroup], [], 0.1)
    kill_cgroups([cgroup])
    # An exited process leaves the cgroup as it becomes a zombie, before anyone reaps it.
    assert wait_gone([cgroup], [], 5)
    assert inside.wait(timeout=5) == -9
    assert bystander.poll() is None


@pytest.mark.parametrize("graceful", [True, False])
def test_stop_machines_returns_once_everything_is_gone(ours, lab_machine, cgroup, graceful):
    ours.append(nspawn := _sleeper(cgroup))  # stands in for the machine's nspawn
    ours.append(bystander := _sleeper())
    lab_machine.pidfile.write_text(str(nspawn.pid))
    _reap_later(nspawn, 0.5)  # init reaps it a while after it exits
    t = time.monotonic()
    machine.stop_machines([lab_machine], graceful=graceful, timeout=10)
    assert 0.45 < time.monotonic() - t < 4
    # reaped by the time stop returned (returncode is set by the reaping thread a moment
    # later: read it through wait(), which returns at once for a reaped process)
    assert identify(nspawn.pid) is None
    assert nspawn.wait(timeout=5) == (-15 if graceful else -9)
    assert not cgroup.exists() and not lab_machine.pidfile.exists()
    assert bystander.poll() is None


def test_stop_machines_waits_for_an_exited_nspawn_to_be_reaped(ours, lab_machine, cgroup):
    ours.append(nspawn := _sleeper(cgroup))
    lab_machine.pidfile.write_text(str(nspawn.pid))
    nspawn.kill()
    assert wait_gone([cgroup], [], 5)  # out of its cgroup: only the pid file still knows it
    _reap_later(nspawn, 0.5)
    t = time.monotonic()
    machine.stop_machines([lab_machine])
    assert 0.45 < time.monotonic() - t < 4
    # reaped by the time stop returned (returncode is set by the reaping thread a moment
    # later: read it through wait(), which returns at once for a reaped process)
    assert identify(nspawn.pid) is None
    assert nspawn.wait(timeout=5) == -9


def test_stop_machines_kills_what_ignores_the_power_off(ours, lab_machine, cgroup):
    ours.append(stubborn := _sleeper(cgroup, ignore_term=True))
    _reap_later(stubborn, 0.6)
    t = time.monotonic()
    machine.stop_machines([lab_machine], graceful=True, timeout=0.3)
    assert 0.55 < time.monotonic() - t < 4
    # reaped by the time stop returned (returncode is set by the reaping thread a moment
    # later: read it through wait(), which returns at once for a reaped process)
    assert identify(stubborn.pid) is None
    assert stubborn.wait(timeout=5) == -9
    assert not cgroup.exists()
