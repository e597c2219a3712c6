"""`down` removes everything the lab made, also after `up` was killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

from pyroute2 import IPRoute

from .conftest import HASTACK, REPO, run


def test_down_after_a_killed_up_leaves_nothing(lab):
    proc = subprocess.Popen([HASTACK, "up", "--force-deploy"], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        if "▸" in line:  # the deploy is under way
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()

    run("down")

    with IPRoute() as ipr:
        links = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
    assert [n for n in links if n.startswith("hs")] == []
    cgroups = [p for root in ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified")
               for p in Path(root).glob("hs-*")]
    assert cgroups == []
    mounts = Path("/proc/self/mountinfo").read_text()
    assert "/var/lib/hastack" not in mounts and "overlay" not in mounts
    nspawn = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if cmd[0].endswith(b"systemd-nspawn"):  # zombies have an empty cmdline
            nspawn.append(pid)
    assert nspawn == []
    assert not Path("/var/lib/hastack/lab").exists()
    # down is idempotent
    run("down")
