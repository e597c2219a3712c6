"""Run ansible/site.yml against an inventory (the lab's or a user's), with live progress.

ansible-runner gives us Ansible's events as they happen; we show the current task and how
far each host got, and turn the first failure into one clear error line. Certificates are made
on the controller first (hastack.pki), so a bad one refuses the deploy before any connection.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from hastack import alerting, paths, pki, wheelhouse
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


@dataclass(frozen=True)
class TlsRequest:
    """What an inventory asks pki.ensure for: names, machine addresses, maybe the user's pair."""
    domain: str
    aliases: list[str]
    machines: dict[str, list[str]]
    site_cert: Path | None = None
    site_key: Path | None = None


def tls_request(listing: dict[str, Any], inventory: Path) -> TlsRequest:
    """`ansible-inventory --list` output -> TlsRequest (pure, so it is testable without Ansible).

    A variable is read as each host sees it (host, then group, then `all` vars); the site's
    variables must agree on every host. Relative certificate paths are relative to the
    inventory file's directory.
    """
    where = inventory.resolve()
    hostvars: dict[str, dict[str, Any]] = (listing.get("_meta") or {}).get("hostvars") or {}
    names = set(hostvars)
    for group in listing.values():
        if isinstance(group, dict):
            names.update(group.get("hosts") or [])
    if not names:
        raise HastackError(f"{where}: lists no hosts")
    common = (listing.get("all") or {}).get("vars") or {}
    seen = {name: {**common, **(hostvars.get(name) or {})} for name in sorted(names)}

    def site_var(key: str, default: Any = None) -> Any:
        values = {json.dumps(v.get(key, default), sort_keys=True): h for h, v in seen.items()}
        if len(values) > 1:
            detail = "; ".join(f"{h}: {_one_line(v)[:60]}" for v, h in sorted(values.items()))
            raise HastackError(f"{where}: hosts disagree on {key} ({detail}); set it once, "
                               "in all.vars")
        value = next(iter(seen.values())).get(key, default)
        if isinstance(value, str) and "{{" in value:
            raise HastackError(f"{where}: {key} is a template; hastack reads it before Ansible "
                               "runs, so give the value itself")
        return value

    machines = {name: _addresses(where, name, hv) + _services(listing, name)
                for name, hv in seen.items()}
    domain = site_var("hastack_domain")
    if not isinstance(domain, str) or not domain:
        raise HastackError(f"{where}: all.vars.hastack_domain is missing or not a name")
    aliases = site_var("hastack_aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise HastackError(f"{where}: all.vars.hastack_aliases must be a list of domain names")
    base = where if where.is_dir() else where.parent
    files = []
    for key in ("hastack_site_cert_file", "hastack_site_key_file"):
        value = site_var(key)
        if value is not None and (not isinstance(value, str) or not value):
            raise HastackError(f"{where}: all.vars.{key} must be a file path")
        files.append(base / Path(value).expanduser() if value else None)
    if (files[0] is None) != (files[1] is None):
        raise HastackError(f"{where}: set both all.vars.hastack_site_cert_file and "
                           "hastack_site_key_file (your own site certificate), or neither")
    return TlsRequest(domain, aliases, machines, files[0], files[1])


def _addresses(where: Path, name: str, hv: dict[str, Any]) -> list[str]:
    found = []
    for key in ("hastack_private_address", "hastack_public_address"):
        value = hv.get(key)
        if value is None:
            if key == "hastack_private_address":
                raise HastackError(f"{where}: all.hosts.{name}.{key} is missing")
            continue
        try:
            found.append(str(ipaddress.ip_address(str(value))))
        except ValueError:
            raise HastackError(f"{where}: all.hosts.{name}.{key}: '{value}' is not an IP "
                               "address") from None
    return found


def _services(listing: dict[str, Any], name: str) -> list[str]:
    """Service names (pki.SERVICE_GROUPS) for the groups the host belongs to, also through
    child groups (database = db_primary + db_replica)."""
    def members(group: str, seen: frozenset[str] = frozenset()) -> set[str]:
        body = listing.get(group) or {}
        found = set(body.get("hosts") or [])
        for child in body.get("children") or []:
            if child not in seen:
                found |= members(child, seen | {group})
        return found
    return [pki.service_name(g) for g in pki.SERVICE_GROUPS if name in members(g)]


def list_inventory(inventory: Path, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Hosts and variables of any inventory Ansible reads (YAML, INI, dynamic, a directory)."""
    binary = Path(sys.executable).parent / "ansible-inventory"
    result = subprocess.run([str(binary), "-i", str(inventory), "--list"], capture_output=True,
                            text=True, env={**os.environ, **(env or {})}, timeout=300)
    if result.returncode != 0:
        lines = [line for line in result.stderr.splitlines() if line.strip()] or ["no output"]
        raise HastackError(f"{inventory}: ansible-inventory failed: {_one_line(lines[-1])}")
    try:
        listing = json.loads(result.stdout)
    except json.JSONDecodeError:
        raise HastackError(f"{inventory}: ansible-inventory printed no JSON; run "
                           f"'{binary} -i {inventory} --list' to see why") from None
    if not isinstance(listing, dict):
        raise HastackError(f"{inventory}: ansible-inventory printed no host list")
    return listing


def ensure_tls(inventory: Path, secrets_dir: Path, env: dict[str, str] | None = None,
               listing: dict[str, Any] | None = None) -> Path:
    """The inventory's certificates in {secrets_dir}/tls, (re)issued or checked as needed."""
    request = tls_request(listing or list_inventory(inventory, env), inventory)
    return pki.ensure(secrets_dir, request.domain, request.aliases, request.machines,
                      site_cert=request.site_cert, site_key=request.site_key)


def read_inventory(inventory: Path, secrets_dir: Path) -> dict[str, Any]:
    """list_inventory with a deploy's Ansible environment, to read once and pass to run()
    (each ansible-inventory costs a Python start-up, 1-3 s)."""
    return list_inventory(inventory, _ansible_env(secrets_dir))


def wheelhouses(console: Console, monitoring: bool) -> dict[str, str]:
    """The wheelhouses a deploy ships, as playbook variables: the site's, and the status
    page's if there are monitoring machines (`hastack prepare` builds the same ones)."""
    found = {"hastack_wheelhouse": str(wheelhouse.ensure(console))}
    if monitoring:
        found["hastack_monitoring_wheelhouse"] = str(wheelhouse.ensure_monitoring(console))
    return found


def _mitogen_strategies() -> str:
    """Where Mitogen's strategy plugins live (installed with hastack)."""
    import ansible_mitogen

    return str(Path(ansible_mitogen.__file__).parent / "plugins" / "strategy")


def _ansible_env(secrets_dir: Path) -> dict[str, str]:
    """Ansible's environment. Mitogen runs the same playbook over SSH with one Python per
    machine kept for the whole run instead of a new one per task: a deploy that changes
    nothing takes 47 s instead of 157 s on the default lab (2 cores; ansible-runner job
    events of two `hastack up --force-deploy`, 166 tasks each)."""
    bin_dir = str(Path(sys.executable).parent)
    return {
        "PATH": f"{bin_dir}:{os.environ.get('PATH', '/usr/bin:/bin')}",
        "ANSIBLE_CONFIG": str(paths.ANSIBLE_DIR / "ansible.cfg"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control_path_dir(secrets_dir)),
        "ANSIBLE_STRATEGY_PLUGINS": _mitogen_strategies(),
        "ANSIBLE_STRATEGY": "mitogen_linear",
    }


def run(inventory: Path, secrets_dir: Path, console: Console,
        extra_vars: dict[str, Any] | None = None, limit: str | None = None,
        tags: str | None = None, listing: dict[str, Any] | None = None) -> dict[str, Any]:
    """Deploy; returns Ansible's per-host stats or raises HastackError on the first failure.

    `listing`: the inventory as read_inventory returned it, if the caller already read it.
    """
    if not inventory.exists():
        raise HastackError(f"{inventory}: no such inventory file")
    secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    secrets_dir.chmod(0o700)
    env = _ansible_env(secrets_dir)
    if listing is None:
        listing = list_inventory(inventory, env)
    alerting.check_inventory(listing, inventory)  # receivers, SMTP, extra rules
    tls = ensure_tls(inventory, secrets_dir, env, listing)
    variables = {
        "hastack_secrets_dir": str(secrets_dir),
        "hastack_tls_dir": str(tls),
        "hastack_tls_service_domain": pki.SERVICE_DOMAIN,
        "hastack_site_static": str(paths.SITE_DIR / "src/foobar/static"),
        # the status page's code too, if there are monitoring machines
        **wheelhouses(console, bool((listing.get("monitoring") or {}).get("hosts"))),
    }
    variables.update(extra_vars or {})
    runner_dir = secrets_dir.parent / "runner"
    runner_dir.mkdir(parents=True, exist_ok=True)
    progress = _Progress(console)
    with Live(progress.render(), console=console, refresh_per_second=8, transient=True,
              auto_refresh=console.is_terminal) as live:
        def on_event(event: dict[str, Any]) -> bool:
            progress.handle(event)
            live.update(progress.render())
            return True

        import ansible_runner  # 0.15 s to import: only a deploy needs it

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
