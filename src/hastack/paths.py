"""Where hastack keeps things outside the repository.

State lives under /var/lib/hastack (machines, keys, secrets), caches under /var/cache/hastack
(the lab image, the site's wheelhouse). HASTACK_STATE and HASTACK_CACHE move them, e.g. for tests.
"""

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
SITE_DIR = REPO / "site"


def state_dir() -> Path:
    return Path(os.environ.get("HASTACK_STATE", "/var/lib/hastack"))


def cache_dir() -> Path:
    return Path(os.environ.get("HASTACK_CACHE", "/var/cache/hastack"))


def lab_dir() -> Path:
    return state_dir() / "lab"
