"""The programs the Ansible roles install (files without a .py suffix), loaded as modules so
unit tests can call their functions."""

from __future__ import annotations

import importlib.machinery
import importlib.util
from pathlib import Path
from types import ModuleType

ROLES = Path(__file__).resolve().parents[2] / "ansible" / "roles"


def load(role: str, name: str) -> ModuleType:
    """ansible/roles/<role>/files/<name> as a module named like the file."""
    path = ROLES / role / "files" / name
    loader = importlib.machinery.SourceFileLoader(name.replace("-", "_"), str(path))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module
