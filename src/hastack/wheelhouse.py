"""The site's wheelhouse: its wheel and every dependency, built on the controller.

Servers (lab or real) have no package index; they install from this directory with
`pip install --no-index --find-links`. Cached by the hash of the site's sources.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console

from hastack import paths, ui
from hastack.errors import HastackError


def site_hash() -> str:
    digest = hashlib.sha256()
    root = paths.SITE_DIR
    files = [root / "pyproject.toml", *sorted((root / "src").rglob("*"))]
    for f in files:
        if f.is_file() and "__pycache__" not in f.parts:
            digest.update(str(f.relative_to(root)).encode())
            digest.update(f.read_bytes())
    return digest.hexdigest()[:12]


def ensure(console: Console) -> Path:
    target = paths.cache_dir() / "wheelhouse" / site_hash()
    if (target / "complete").exists():
        return target
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    with ui.status(console, "building the site's wheelhouse"):
        result = subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "--quiet", "--wheel-dir", str(tmp),
             str(paths.SITE_DIR)], capture_output=True, text=True)
    if result.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise HastackError(f"building the site's wheelhouse failed: {last}")
    (tmp / "complete").write_text("")
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target
