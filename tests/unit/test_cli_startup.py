"""Every `hastack` command pays the CLI's imports before doing anything: `hastack ssh web1
true` took 1.5 s, 1.4 s of it importing pyroute2, ansible-runner and the chaos engine that
only `up`, `deploy` and `chaos` use. The e2e suite runs the CLI hundreds of times."""

from __future__ import annotations

import subprocess
import sys

import pytest

# imported only by the commands that use them
HEAVY = ("pyroute2", "ansible_runner", "hastack.chaos.run", "hastack.loadgen", "dns")


@pytest.mark.parametrize("module", ["hastack.cli", "hastack.lab.lab"])
def test_the_cli_imports_none_of_the_heavy_modules(module):
    code = (f"import sys, {module}\n"
            f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "", f"importing {module} imports {out}"
