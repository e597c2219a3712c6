"""Which code this process runs, so a rolling deploy can wait until the new code answers.

`<foobar-site version>+<build>`: the build is FOOBAR_BUILD if the deploy sets one (a
commit id, a wheel hash), else a short hash of the package's installed files (code,
templates, static files), taken once at start-up. Either way two processes answer the
same version exactly when they run the same code.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from foobar import __version__

PACKAGE_DIR = Path(__file__).resolve().parent
BUILD_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


def code_hash(root: Path = PACKAGE_DIR) -> str:
    """12 hex digits over every file of the package (paths and contents, bytecode aside)."""
    digest = hashlib.sha256()
    files = sorted(
        path
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc"
    )
    for path in files:
        data = path.read_bytes()
        name = path.relative_to(root).as_posix().encode()
        digest.update(len(name).to_bytes(4, "big") + name + len(data).to_bytes(8, "big"))
        digest.update(data)
    return digest.hexdigest()[:12]


def running_version(build: str | None = None) -> str:
    return f"{__version__}+{build or code_hash()}"
