"""The lab image: one Debian 12 root filesystem that every lab machine boots from.

Machines have no internet, so every Debian package a role uses is preinstalled here and every
role's service is disabled (the playbook enables what each machine needs). The image is cached
under a name derived from its package list and build recipe, built under a temporary name and
renamed only when complete, so an interrupted build never leaves a broken cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from hastack import paths
from hastack.errors import HastackError

SUITE = "bookworm"
RECIPE_VERSION = 2  # bump when the build steps below change

# what the machines need to boot and be managed by Ansible over SSH
BASE_PACKAGES = [
    "systemd", "systemd-sysv", "dbus", "iproute2", "iputils-ping", "procps", "less",
    "openssh-server", "python3", "python3-venv", "python3-pymysql", "ca-certificates",
    "curl", "nftables", "sudo", "python3-apt",
]
# what the roles install nothing of at deploy time, because machines are offline
ROLE_PACKAGES = [
    "haproxy", "keepalived", "socat", "nginx", "mariadb-server", "mariadb-client", "dnsmasq",
    "prometheus", "prometheus-alertmanager", "prometheus-node-exporter",
    "prometheus-blackbox-exporter", "prometheus-mysqld-exporter", "prometheus-nginx-exporter",
    "fail2ban", "python3-systemd", "mariadb-backup",
    # the database tier's failover engine and its third quorum vote (docs/architecture.md)
    "pacemaker", "pacemaker-cli-utils", "corosync", "corosync-qdevice", "corosync-qnetd",
    "resource-agents",
    "fence-agents",
]
# enabled by the Debian packages, enabled again by the playbook on the machines that need them
DISABLED_UNITS = [
    "nginx", "haproxy", "keepalived", "mariadb", "dnsmasq", "nftables", "prometheus",
    "prometheus-alertmanager", "prometheus-node-exporter", "prometheus-blackbox-exporter",
    "prometheus-mysqld-exporter", "prometheus-nginx-exporter", "fail2ban",
    "corosync", "pacemaker", "corosync-qdevice", "corosync-qnetd",
    "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer", "fstrim.timer",
    "man-db.timer", "dpkg-db-backup.timer", "logrotate.timer",
]
MASKED_UNITS = ["systemd-networkd-wait-online.service", "getty@tty1.service",
                "console-getty.service", "systemd-logind.service"]
SSHD_CONFIG = """\
# hastack lab: ed25519 host key only (generated per machine), keys only, root by key.
HostKey /etc/ssh/ssh_host_ed25519_key
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UseDNS no
"""

Progress = Callable[[str], None]


def image_key() -> str:
    recipe = json.dumps([RECIPE_VERSION, SUITE, BASE_PACKAGES, ROLE_PACKAGES,
                         DISABLED_UNITS, MASKED_UNITS, SSHD_CONFIG])
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def images_dir() -> Path:
    return paths.cache_dir() / "images"


def image_root() -> Path:
    """The rootfs of the current image (may not exist yet)."""
    return images_dir() / f"debian12-{image_key()}" / "rootfs"


def host_mirror() -> str:
    """The Debian mirror the host's own apt uses (never hard-coded)."""
    candidates = sorted(Path("/etc/apt/sources.list.d").glob("*.sources"))
    for f in candidates:
        for block in f.read_text().split("\n\n"):
            if re.search(rf"^Suites:.*\b{SUITE}\b", block, re.M) and "security" not in block:
                m = re.search(r"^URIs:\s*(\S+)", block, re.M)
                if m:
                    return m.group(1)
    legacy = Path("/etc/apt/sources.list")
    if legacy.exists():
        for line in legacy.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and parts[2] == SUITE:
                return parts[1]
    raise HastackError("no Debian bookworm mirror in /etc/apt/sources.list.d/*.sources or "
                       "/etc/apt/sources.list; configure apt on this host first")


def ensure_image(progress: Progress) -> Path:
    """Return the cached image rootfs, building it if its recipe changed."""
    root = image_root()
    if (root.parent / "complete.json").exists():
        return root
    build(root.parent, progress)
    return root


def _run(cmd: list[str], what: str, log: Path, env: dict[str, str] | None = None,
         header: str | None = None) -> None:
    """Run one build step with its output appended to the build log; fail in one line."""
    with log.open("a") as out:
        out.write(f"\n{header or '$ ' + ' '.join(cmd)}\n")
        out.flush()
        result = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env)
    if result.returncode != 0:
        raise HastackError(f"image build failed while {what} (exit {result.returncode}); "
                           f"see {log}")


def _in_chroot(root: Path, script: str, what: str, log: Path) -> None:
    """Run a shell script chrooted into root with /proc and /dev, in a private mount namespace."""
    wrapper = (
        f"set -e; mount -t proc proc {root}/proc; mount --rbind /dev {root}/dev; "
        f"mount -t sysfs sysfs {root}/sys; "
        f"exec chroot {root} /bin/sh -ec \"$0\""
    )
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive",
           "LC_ALL": "C"}
    _run(["unshare", "--mount", "--propagation", "private", "sh", "-c", wrapper, script],
         what, log, env=env, header=f"# chroot: {what}\n{script}")


def build(target: Path, progress: Progress) -> None:
    for tool, package in (("debootstrap", "debootstrap"), ("unshare", "util-linux")):
        if shutil.which(tool) is None:
            raise HastackError(f"{tool} not found; install the Debian package {package} "
                               f"(apt-get install {package}) or run 'make up'")
    images_dir().mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    _remove_stale_builds()
    tmp.mkdir()
    root = tmp / "rootfs"
    log = tmp / "build.log"
    started = time.monotonic()
    mirror = host_mirror()

    progress("debootstrap (minimal Debian 12)")
    # debootstrap mounts /proc and /sys in the target: keep those mounts off the host.
    _run(["unshare", "--mount", "--propagation", "private",
          "debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
          SUITE, str(root), mirror], "running debootstrap", log)

    progress("installing the roles' packages")
    # Same apt sources as the host (security updates included) while building.
    for src in Path("/etc/apt/sources.list.d").glob("*.sources"):
        shutil.copy(src, root / "etc/apt/sources.list.d" / src.name)
    if any((root / "etc/apt/sources.list.d").glob("*.sources")):
        (root / "etc/apt/sources.list").write_text("")
    shutil.copy("/etc/resolv.conf", root / "etc/resolv.conf")
    (root / "usr/sbin/policy-rc.d").write_text("#!/bin/sh\nexit 101\n")
    (root / "usr/sbin/policy-rc.d").chmod(0o755)
    _in_chroot(root, "apt-get update -q && apt-get install -y -q --no-install-recommends "
               + " ".join(ROLE_PACKAGES) + " && apt-get -y -q upgrade && apt-get clean",
               "installing packages", log)

    progress("configuring the image")
    _in_chroot(
        root,
        f"systemctl disable {' '.join(DISABLED_UNITS)} 2>/dev/null || true\n"
        f"systemctl mask {' '.join(MASKED_UNITS)}\n"
        "systemctl enable systemd-networkd ssh\n",
        "configuring units", log)
    (root / "usr/sbin/policy-rc.d").unlink()
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "etc/ssh/sshd_config.d/hastack.conf").write_text(SSHD_CONFIG)
    (root / "etc/machine-id").write_text("")
    (root / "etc/resolv.conf").unlink(missing_ok=True)
    (root / "etc/resolv.conf").write_text("")
    shutil.rmtree(root / "var/lib/apt/lists", ignore_errors=True)
    (root / "var/lib/apt/lists/partial").mkdir(parents=True)

    info = {"key": image_key(), "suite": SUITE, "packages": BASE_PACKAGES + ROLE_PACKAGES,
            "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "build_seconds": round(time.monotonic() - started, 1)}
    (tmp / "complete.json").write_text(json.dumps(info, indent=2))
    if (target / "complete.json").exists():
        # another run (up, prepare) finished this image meanwhile and machines may boot
        # from it already: keep that one
        shutil.rmtree(tmp, ignore_errors=True)
        progress("image ready (built meanwhile by another run)")
        return
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    progress(f"image ready in {info['build_seconds']} s")


def prune_unused() -> None:
    """Remove images older than the current recipe (call when no machine uses them)."""
    current = image_root().parent
    for d in images_dir().glob("debian12-*"):
        if d != current and ".tmp-" not in d.name:
            shutil.rmtree(d, ignore_errors=True)


def _remove_stale_builds() -> None:
    """Partial builds left by an interrupted run (their builder is gone)."""
    for d in images_dir().glob("*.tmp-*"):
        pid = d.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(d, ignore_errors=True)
