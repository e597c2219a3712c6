"""End-to-end tests: one real lab per test session, driven through the real CLI.

Needs root (bridges, containers). The lab is brought up once, by the first test that asks for
it, and taken down at the end; test_99_down checks that nothing of it is left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import yaml

from hastack import siteclient
from hastack.loadgen import BackgroundLoad

REPO = Path(__file__).resolve().parents[2]
HASTACK = str(Path(sys.executable).parent / "hastack")


def run(*args: str, check: bool = True, timeout: float = 1200,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([HASTACK, *args], capture_output=True, text=True, timeout=timeout,
                            cwd=REPO, env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        pytest.fail(f"hastack {' '.join(args)} exited {result.returncode}:\n"
                    f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    return result


def db_roles() -> dict[str, str]:
    """Each DB node's role now (`hastack db status`): failovers in earlier tests may have
    swapped the inventory's db-primary and db-replica."""
    return {n["name"]: n["role"] for n in json.loads(run("db", "status", "--json").stdout)["nodes"]}


def in_role(role: str) -> list[str]:
    """The DB nodes that have `role` now ("primary", "replica")."""
    return [name for name, r in db_roles().items() if r == role]


def deploy_vars(lab: Lab, tmp_path: Path, check: bool = True, *, limit: str | None = None,
                **variables: object) -> subprocess.CompletedProcess[str]:
    """`hastack deploy -i` of the lab's own inventory (its secrets too) with extra all.vars,
    to the `limit` hosts/groups only if given. `hastack up --force-deploy` (or deploy_vars
    with no variables) puts the lab's own values back."""
    data = yaml.safe_load(Path(lab.status["inventory"]).read_text())
    data["all"]["vars"].update({k: v if isinstance(v, list | dict) else str(v)
                                for k, v in variables.items()})
    inventory = tmp_path / "servers.yml"
    inventory.write_text(yaml.safe_dump(data))
    return run("deploy", "-i", str(inventory), "--secrets-dir",
               str(Path(lab.status["inventory"]).parent / "secrets"),
               *(["--limit", limit] if limit else []), check=check)


def deploy_with(lab: Lab, tmp_path: Path, **variables: object
                ) -> tuple[str, subprocess.CompletedProcess[str]]:
    """deploy_vars expected to be refused: returns its one error line and the result."""
    result = deploy_vars(lab, tmp_path, check=False, **variables)
    assert result.returncode != 0, result.stdout[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "deployed:" not in result.stdout
    return lines[0], result


def poll(condition: Callable[[], object], timeout: float, what: str,
         interval: float = 0.1) -> object:
    """Wait for condition() to return something truthy; fail with `what` after timeout."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - reported if we time out
            last_exc = exc
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f} s waiting for {what} (last error: {last_exc})")


@contextmanager
def load(lab: Lab, vip: str, path: str = "/", header: str = "x-lb", rate: float = 100,
         **options) -> Iterator[BackgroundLoad]:
    """Bounded background load on one VIP for the length of the block (a fault experiment)."""
    with BackgroundLoad(f"https://{vip}{path}", host_header=lab.domain, rate=rate,
                        record_header=header, ca_file=lab.ca,
                        **{"timeout": 2.0, **options}) as bg:
        if not bg.wait_for(20, 10):
            pytest.fail(f"load on {vip}{path} did not start")
        yield bg
    assert bg.result is not None, "the load generator did not finish"


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """A refused command: non-zero exit and exactly one line, `error: ...`, on stderr."""
    assert result.returncode != 0
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


def failures(since: float, **loads: BackgroundLoad) -> str:
    """The failed requests of finished loads, for an assertion message: how many of each
    kind, then the first ones in time order (seconds from `since`, kind, status or error,
    how long it took), which is what tells a dead server from a refusal or a timeout."""
    failed = sorted(((s, kind) for kind, bg in loads.items() for s in bg.result.samples
                     if s.failed), key=lambda pair: pair[0].scheduled)
    counts = ", ".join(f"{kind} {sum(1 for _, k in failed if k == kind)} of {bg.result.sent}"
                       for kind, bg in loads.items())
    first = "; ".join(f"+{s.scheduled - since:.2f} s {kind} {s.status or s.error} "
                      f"{1000 * (s.end - s.start):.0f} ms" for s, kind in failed[:15])
    return f"failed: {counts}; first: {first}"


def more(bg: BackgroundLoad, n: int, what: str) -> None:
    """Wait until n more requests of a background load completed."""
    if not bg.wait_for(len(bg.live) + n, 10 + n / 20):
        pytest.fail(f"timed out waiting for {what}")


class Lab:
    def __init__(self) -> None:
        self.refresh()

    def refresh(self) -> None:
        self.status = json.loads(run("status", "--json").stdout)
        self.domain = self.status["site"]["domain"]
        self.vips = self.status["site"]["vips"]
        self.ca = self.status["site"]["ca_cert"]

    def machine(self, name: str) -> dict:
        return next(m for m in self.status["machines"] if m["name"] == name)

    def names(self, role: str) -> list[str]:
        return [m["name"] for m in self.status["machines"] if role in m["roles"]]

    def client(self, vip: str, **kw) -> httpx.Client:
        """HTTPS to one VIP as an outside client: domain in SNI and Host, verified by the CA."""
        return siteclient.client(vip, self.domain, self.ca, **kw)

    def ssh(self, machine: str, command: str, check: bool = True) -> str:
        return run("ssh", machine, "--", command, check=check).stdout


@pytest.fixture(scope="session", autouse=True)
def clean_slate() -> None:
    """Start from no lab: a previous run (or a killed session) may have left one behind,
    and `down` is the documented way to clear it."""
    if os.environ.get("HASTACK_KEEP_LAB"):
        return
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root: they create bridges and containers")
    run("down")


@pytest.fixture(scope="session")
def lab() -> Lab:
    if os.geteuid() != 0:
        pytest.fail("end-to-end tests need root: they create bridges and containers")
    run("up")
    yield Lab()
    if not os.environ.get("HASTACK_KEEP_LAB"):  # developers: keep it up between runs
        run("down", check=False)
