"""Filters of the firewall role: the flows' expansion lives in src/hastack/firewall.py.

Loaded by path from this repository (the playbook always runs from it), so the role and the
tests use the very same code, whichever Python runs Ansible.
"""

import importlib.util
import sys
from pathlib import Path

_NAME = "hastack_firewall_impl"
_SOURCE = Path(__file__).resolve().parents[4] / "src" / "hastack" / "firewall.py"


def _load():
    if _NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(_NAME, _SOURCE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[_NAME] = module  # dataclasses look their module up while it loads
        spec.loader.exec_module(module)
    return sys.modules[_NAME]


class FilterModule:
    def filters(self):
        return dict(_load().FILTERS)
