"""Wheelhouses: Python code and every dependency, built on the controller.

Servers (lab or real) have no package index; they install from these directories with
`pip install --no-index --find-links`.

- the site's (`ensure`): its wheel and its dependencies, for the app servers; cached by the
  hash of the site's sources.
- the monitoring machines' (`ensure_monitoring`): hastack's own wheel (installed there with
  --no-deps: only hastack.status, hastack.topology, hastack.errors and hastack.statuspage are
  used) plus the pinned, hash-checked closure of httpx and matplotlib in
  requirements/monitoring.txt, downloaded as binary wheels for the servers' Python (Debian 12:
  CPython 3.11, glibc 2.36) whatever the controller runs; cached by the hash of hastack's
  sources and that file.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

from rich.console import Console

from hastack import paths, ui
from hastack.errors import HastackError

MONITORING_REQUIREMENTS = paths.REPO / "requirements" / "monitoring.txt"
# The servers' Python and C library (Debian 12), for which binary wheels are chosen.
SERVER_PYTHON = "311"
SERVER_GLIBC_MINOR = 36


def _files_hash(root: Path, files: Iterable[Path], *extra: str) -> str:
    digest = hashlib.sha256()
    for f in files:
        if f.is_file() and "__pycache__" not in f.parts:
            digest.update(str(f.relative_to(root)).encode())
            digest.update(f.read_bytes())
    for text in extra:
        digest.update(text.encode())
    return digest.hexdigest()[:12]


def site_hash() -> str:
    root = paths.SITE_DIR
    return _files_hash(root, [root / "pyproject.toml", *sorted((root / "src").rglob("*"))])


def server_arch() -> str:
    """The servers' CPU architecture: the controller's (x86_64 in the lab)."""
    return platform.machine()


def monitoring_hash() -> str:
    root = paths.REPO
    return _files_hash(root, [root / "pyproject.toml", MONITORING_REQUIREMENTS,
                              *sorted((root / "src" / "hastack").rglob("*"))],
                       server_arch(), SERVER_PYTHON, str(SERVER_GLIBC_MINOR))


def _build(console: Console, target: Path, what: str,
           steps: Callable[[Path], list[list[str]]]) -> Path:
    """Run each pip command of steps(tmp) into a fresh directory, then move it to target
    (complete or not at all: a crash leaves no half wheelhouse behind)."""
    if (target / "complete").exists():
        return target
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with ui.status(console, f"building {what}"):
        for command in steps(tmp):
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                shutil.rmtree(tmp, ignore_errors=True)
                last = (result.stderr.strip().splitlines() or ["no output"])[-1]
                raise HastackError(f"building {what} failed: {last}")
    (tmp / "complete").write_text("")
    if (target / "complete").exists():  # another run (up, prepare) finished it meanwhile
        shutil.rmtree(tmp, ignore_errors=True)
        return target
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def ensure(console: Console) -> Path:
    """The site's wheelhouse (the app servers install foobar-site from it)."""
    def steps(tmp: Path) -> list[list[str]]:
        return [[sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(tmp),
                 str(paths.SITE_DIR)]]

    return _build(console, paths.cache_dir() / "wheelhouse" / site_hash(),
                  "the site's wheelhouse", steps)


def monitoring_platforms(arch: str) -> list[str]:
    """pip's --platform tags a Debian 12 server accepts (pip does not widen manylinux_2_x)."""
    return [f"manylinux_2_{minor}_{arch}" for minor in range(SERVER_GLIBC_MINOR, 16, -1)] + [
        f"manylinux2014_{arch}"]


def monitoring_commands(tmp: Path, arch: str) -> list[list[str]]:
    """The pip commands that fill the monitoring wheelhouse `tmp` (also shipped: the
    requirements file the servers install from, as requirements.txt)."""
    shutil.copy(MONITORING_REQUIREMENTS, tmp / "requirements.txt")
    platforms = [arg for p in monitoring_platforms(arch) for arg in ("--platform", p)]
    return [
        [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(tmp),
         "--only-binary=:all:", "--no-deps", "--require-hashes",
         "--python-version", SERVER_PYTHON, "--implementation", "cp", "--abi",
         f"cp{SERVER_PYTHON}", *platforms, "-r", str(MONITORING_REQUIREMENTS)],
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir",
         str(tmp), str(paths.REPO)],
    ]


def ensure_monitoring(console: Console) -> Path:
    """The monitoring machines' wheelhouse (the status page's venv is installed from it)."""
    arch = server_arch()
    return _build(console, paths.cache_dir() / "wheelhouse-monitoring" / monitoring_hash(),
                  "the monitoring machines' wheelhouse",
                  lambda tmp: monitoring_commands(tmp, arch))
