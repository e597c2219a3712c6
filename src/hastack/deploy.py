"""Run ansible/site.yml against an inventory (the lab's or a user's), with live progress.

ansible-runner gives us Ansible's events as they happen; we show the current task and how
far each host got, and turn the first failure into one clear error line.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ansible_runner
from rich.console import Console
from rich.live import Live
from rich.text import Text

from hastack import paths, wheelhouse
from hastack.errors import HastackError


@dataclass
class _Progress:
    console: Console
    task: str = ""
    play: str = ""
    tasks_done: int = 0
    ok: int = 0
    changed: int = 0
    failures: list[str] = field(default_factory=list)
    hosts_seen: set[str] = field(default_factory=set)

    def render(self) -> Text:
        t = Text()
        t.append(f"[{self.tasks_done} tasks] ", style="dim")
        t.append(f"{self.play} ▸ ", style="cyan")
        t.append(self.task or "starting", style="bold")
        t.append(f"   ok {self.ok}  changed {self.changed}", style="green")
        if self.failures:
            t.append(f"  failed {len(self.failures)}", style="red")
        return t

    def handle(self, event: dict[str, Any]) -> bool:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        host = data.get("host", "?")
        if kind == "playbook_on_play_start":
            self.play = data.get("play", "")
        elif kind == "playbook_on_task_start":
            self.tasks_done += 1
            self.task = data.get("task", "")
            if not self.console.is_terminal:
                self.console.print(f"  {self.play} ▸ {self.task}", highlight=False)
        elif kind == "runner_on_ok":
            self.hosts_seen.add(host)
            if data.get("res", {}).get("changed"):
                self.changed += 1
            else:
                self.ok += 1
        elif kind == "runner_on_failed" and not data.get("ignore_errors"):
            res = data.get("res", {})
            msg = res.get("msg") or res.get("stderr") or res.get("stdout") or "failed"
            line = f"{host}: task '{data.get('task', '')}': {_one_line(msg)}"
            self.failures.append(line)
            self.console.print(Text(f"✗ {line}", style="red"))
        elif kind == "runner_on_unreachable":
            msg = data.get("res", {}).get("msg", "unreachable")
            line = f"{host} is unreachable: {_one_line(msg)}"
            self.failures.append(line)
            self.console.print(Text(f"✗ {line}", style="red"))
        return True


def _one_line(msg: Any) -> str:
    text = " ".join(str(msg).split())
    return text if len(text) < 300 else text[:297] + "..."


def control_path_dir(secrets_dir: Path) -> Path:
    """SSH multiplexing sockets of one environment (closed by `hastack down` in the lab)."""
    return secrets_dir.parent / "ssh-cp"


def close_connections(secrets_dir: Path) -> None:
    """Ask every persistent SSH master of this environment to exit."""
    for sock in control_path_dir(secrets_dir).glob("*"):
        subprocess.run(["ssh", "-o", f"ControlPath={sock}", "-O", "exit", "hastack"],
                       capture_output=True, timeout=10)


def run(inventory: Path, secrets_dir: Path, console: Console,
        extra_vars: dict[str, Any] | None = None, limit: str | None = None,
        tags: str | None = None) -> dict[str, Any]:
    """Deploy; returns Ansible's per-host stats or raises HastackError on the first failure."""
    if not inventory.exists():
        raise HastackError(f"{inventory}: no such inventory file")
    secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    secrets_dir.chmod(0o700)
    wheels = wheelhouse.ensure(console)
    variables = {
        "hastack_secrets_dir": str(secrets_dir),
        "hastack_wheelhouse": str(wheels),
        "hastack_site_static": str(paths.SITE_DIR / "src/foobar/static"),
    }
    variables.update(extra_vars or {})
    runner_dir = secrets_dir.parent / "runner"
    runner_dir.mkdir(parents=True, exist_ok=True)
    bin_dir = str(Path(sys.executable).parent)
    env = {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "ANSIBLE_CONFIG": str(paths.ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_path_dir(secrets_dir)),
    }
    progress = _Progress(console)
    with Live(progress.render(), console=console, refresh_per_second=8, transient=True,
              auto_refresh=console.is_terminal) as live:
        def on_event(event: dict[str, Any]) -> bool:
            progress.handle(event)
            live.update(progress.render())
            return True

        result = ansible_runner.run(
            private_data_dir=str(runner_dir),
            project_dir=str(paths.ANSIBLE_DIR),
            playbook="site.yml",
            inventory=str(inventory.resolve()),
            extravars=variables,
            envvars=env,
            limit=limit,
            tags=tags,
            event_handler=on_event,
            quiet=True,
            rotate_artifacts=1,
            timeout=1800,
        )
    stats = result.stats or {}
    if result.rc != 0 or progress.failures:
        first = progress.failures[0] if progress.failures else (
            f"ansible-playbook exited with {result.rc} ({result.status}); "
            f"see {runner_dir}/artifacts")
        raise HastackError(f"deploy failed: {first}")
    console.print(f"[green]deployed[/green]: {progress.tasks_done} tasks, "
                  f"{progress.changed} changes on {len(progress.hosts_seen)} machines")
    return stats
