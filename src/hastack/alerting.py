"""Alerting settings of an inventory, checked before a deploy changes anything.

Real servers may add receivers (email, chat, any webhook) and their own alert rules through
inventory variables (docs/monitoring.md):

    hastack_alert_receivers:
      - {name: ops-mail, type: email, to: ops@example.com, match: {severity: critical}}
      - {name: chat, type: slack, url: "https://hooks.slack.com/services/T0/B0/XX", channel: "#ops"}
      - {name: pager, type: webhook, url: "https://pager.example.com/hook"}
    hastack_alert_smtp: {smarthost: "smtp.example.com:587", from: alerts@example.com}
    hastack_alert_rules:            # extra rule groups, Prometheus' rule file format
      - name: mine
        rules: [{alert: Foo, expr: "up == 0", for: 1m, labels: {severity: warning}}]

Every mistake is refused in one line naming the variable and what to do: a malformed URL or
address, an unknown type or key, a routing label alerts never carry, a rule that does not
parse (`promtool check rules`, when promtool is on the controller; the monitoring machines
check again before anything changes, see the monitoring role's preflight).
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from hastack import paths
from hastack.errors import HastackError

RULES_FILE = paths.ANSIBLE_DIR / "roles" / "monitoring" / "files" / "rules" / "hastack.rules.yml"

# Labels an alert of this stack may be routed on. Others (instance, job...) vary per target and
# are not a sound basis for routing; unknown ones would silently never match.
ROUTING_LABELS = ("alertname", "severity", "tier", "machine", "vip")
RECEIVER_TYPES = {"webhook": "url", "email": "to", "slack": "url"}
RECEIVER_KEYS = {"name", "type", "url", "to", "channel", "match", "group_by", "send_resolved"}
SMTP_KEYS = {"smarthost", "from", "auth_username", "auth_password", "require_tls"}
RESERVED_NAMES = {"hastack-history"}
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")
VALUE_RE = re.compile(r"^[A-Za-z0-9_.:-]+$")
EMAIL_RE = re.compile(r"^[^@\s,<>\"]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")
HOSTPORT_RE = re.compile(r"^(?P<host>[A-Za-z0-9.-]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")
ALERT_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@cache
def known_values() -> dict[str, frozenset[str]]:
    """Values the stack's own rules give the routing labels (alertname, severity, tier)."""
    groups = yaml.safe_load(RULES_FILE.read_text())["groups"]
    rules = [r for g in groups for r in g["rules"] if "alert" in r]
    return {
        "alertname": frozenset(r["alert"] for r in rules),
        "severity": frozenset(r["labels"]["severity"] for r in rules),
        "tier": frozenset(r["labels"]["tier"] for r in rules),
    }


def _vaulted(value: Any) -> bool:
    """A value encrypted with Ansible Vault, as `ansible-inventory --list` shows it."""
    return isinstance(value, dict) and "__ansible_vault" in value


def _url(where: str, value: Any) -> None:
    if _vaulted(value):
        return  # a secret we cannot read here; amtool checks it on the monitoring machine
    if not isinstance(value, str) or not value:
        raise HastackError(f"{where}: must be an http(s) URL")
    try:
        url = urlsplit(value)
        valid = (url.scheme in ("http", "https") and bool(url.hostname)
                 and url.port != 0 and not any(c.isspace() for c in value))
    except ValueError:  # a port that is not a number, a broken IPv6 literal
        valid = False
    if not valid:
        raise HastackError(f"{where}: '{value}' is not an http(s) URL like "
                           "https://hooks.example.com/path")


def _email(where: str, value: Any) -> None:
    if not isinstance(value, str) or not EMAIL_RE.match(value):
        raise HastackError(f"{where}: '{value}' is not an email address like ops@example.com")


def _matchers(where: str, value: Any) -> None:
    if not isinstance(value, dict) or not value:
        raise HastackError(f"{where}: must be a map of label: value, e.g. "
                           "{severity: critical}")
    known = known_values()
    for label, wanted in value.items():
        if label not in ROUTING_LABELS:
            raise HastackError(f"{where}.{label}: unknown routing label; alerts are routed on "
                               f"{', '.join(ROUTING_LABELS)}")
        if not isinstance(wanted, str) or not VALUE_RE.match(wanted):
            raise HastackError(f"{where}.{label}: '{wanted}' must be a plain value "
                               "(letters, digits, _ . : -)")
        if label in known and wanted not in known[label]:
            raise HastackError(f"{where}.{label}: no alert has {label} '{wanted}'; use one of "
                               f"{', '.join(sorted(known[label]))}")


def check_receivers(value: Any, where: str = "hastack_alert_receivers") -> list[dict[str, Any]]:
    """Validate the extra receivers; returns them (unchanged) or raises one clear line."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise HastackError(f"{where}: must be a list of receivers (name, type, url or to)")
    names: set[str] = set()
    for i, r in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(r, dict):
            raise HastackError(f"{at}: must be a map with name, type and url or to")
        for key in r:
            if key not in RECEIVER_KEYS:
                raise HastackError(f"{at}.{key}: unknown key; allowed: "
                                   f"{', '.join(sorted(RECEIVER_KEYS))}")
        name = r.get("name")
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise HastackError(f"{at}.name: '{name}' is not a receiver name (a-z, 0-9, - and _, "
                               "starting with a letter)")
        if name in RESERVED_NAMES or name in names:
            raise HastackError(f"{at}.name: '{name}' is already taken; give each receiver its "
                               "own name")
        names.add(name)
        kind = r.get("type")
        if kind not in RECEIVER_TYPES:
            raise HastackError(f"{at}.type: '{kind}' is not a receiver type; use "
                               f"{', '.join(RECEIVER_TYPES)}")
        needed = RECEIVER_TYPES[kind]
        if needed not in r:
            raise HastackError(f"{at}.{needed}: is required for a {kind} receiver")
        other = "to" if needed == "url" else "url"
        if other in r:
            raise HastackError(f"{at}.{other}: a {kind} receiver takes {needed}, not {other}")
        if kind == "email":
            to = r["to"]
            for j, address in enumerate(to if isinstance(to, list) else [to]):
                _email(f"{at}.to" + (f"[{j}]" if isinstance(to, list) else ""), address)
        else:
            _url(f"{at}.url", r["url"])
        if "channel" in r and (kind != "slack" or not isinstance(r["channel"], str)):
            raise HastackError(f"{at}.channel: only a slack receiver has a channel (a string)")
        if "match" in r:
            _matchers(f"{at}.match", r["match"])
        if "group_by" in r:
            group_by = r["group_by"]
            if not isinstance(group_by, list) or not all(isinstance(g, str) for g in group_by):
                raise HastackError(f"{at}.group_by: must be a list of label names")
            for label in group_by:
                if label not in ROUTING_LABELS:
                    raise HastackError(f"{at}.group_by: unknown routing label '{label}'; use "
                                       f"{', '.join(ROUTING_LABELS)}")
        if "send_resolved" in r and not isinstance(r["send_resolved"], bool):
            raise HastackError(f"{at}.send_resolved: must be true or false")
    return value


def check_smtp(value: Any, receivers: list[dict[str, Any]],
               where: str = "hastack_alert_smtp") -> None:
    """An email receiver needs the SMTP relay Alertmanager sends through."""
    if value is None:
        if any(r["type"] == "email" for r in receivers):
            raise HastackError(f"{where}: is required by the email receivers (smarthost: "
                               "host:port, from: address)")
        return
    if not isinstance(value, dict):
        raise HastackError(f"{where}: must be a map with smarthost and from")
    for key in value:
        if key not in SMTP_KEYS:
            raise HastackError(f"{where}.{key}: unknown key; allowed: "
                               f"{', '.join(sorted(SMTP_KEYS))}")
    host = value.get("smarthost")
    m = HOSTPORT_RE.match(host) if isinstance(host, str) else None
    if m is None or not 0 < int(m["port"]) < 65536:
        raise HastackError(f"{where}.smarthost: '{host}' must be host:port, e.g. "
                           "smtp.example.com:587")
    if m["host"].startswith("["):
        try:
            ipaddress.IPv6Address(m["host"][1:-1])
        except ValueError:
            raise HastackError(f"{where}.smarthost: '{host}' is not a valid address") from None
    _email(f"{where}.from", value.get("from"))
    if ("auth_password" in value) != ("auth_username" in value):
        raise HastackError(f"{where}: give both auth_username and auth_password, or neither")
    if "require_tls" in value and not isinstance(value["require_tls"], bool):
        raise HastackError(f"{where}.require_tls: must be true or false")


def check_rules(value: Any, where: str = "hastack_alert_rules",
                promtool: str | None = None) -> None:
    """Extra rule groups: their shape here, their PromQL with promtool if it is installed."""
    if value is None:
        return
    if not isinstance(value, list) or not value:
        raise HastackError(f"{where}: must be a list of rule groups (name, rules)")
    ours = known_values()["alertname"]
    for i, group in enumerate(value):
        at = f"{where}[{i}]"
        if not isinstance(group, dict) or not isinstance(group.get("name"), str):
            raise HastackError(f"{at}: must be a rule group with a name and rules")
        if not isinstance(group.get("rules"), list) or not group["rules"]:
            raise HastackError(f"{at}.rules: must be a non-empty list of rules")
        for j, rule in enumerate(group["rules"]):
            if not isinstance(rule, dict) or not isinstance(rule.get("expr"), str):
                raise HastackError(f"{at}.rules[{j}]: needs alert (or record) and expr")
            name = rule.get("alert")
            if isinstance(name, str) and name in ours:
                raise HastackError(f"{at}.rules[{j}].alert: '{name}' is one of the stack's own "
                                   "alerts; choose another name")
    promtool = promtool or shutil.which("promtool")
    if promtool is None:
        return
    with tempfile.TemporaryDirectory(prefix="hastack-rules-") as tmp:
        path = Path(tmp) / "extra.rules.yml"
        # JSON is YAML: no formatting surprises, and the file says exactly what was given.
        path.write_text(json.dumps({"groups": value}, indent=2))
        result = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                                text=True, timeout=60)
    if result.returncode != 0:
        raise HastackError(f"{where}: promtool refuses the rules: {_promtool_error(result)}")


def _promtool_error(result: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in (result.stderr + result.stdout).splitlines()]
    found = [line for line in lines if line and not line.startswith(("Checking", "FAILED"))]
    text = found[0] if found else f"exit {result.returncode}"
    if text.endswith(":") and len(found) > 1:  # "yaml: unmarshal errors:" + the error itself
        text = f"{text} {found[1]}"
    text = re.sub(r"^\S*extra\.rules\.yml:\s*", "", text)
    return text if len(text) < 240 else text[:237] + "..."


def settings(listing: dict[str, Any], inventory: Path) -> dict[str, Any]:
    """The alerting variables as the monitoring machines see them (they must agree)."""
    where = inventory.resolve()
    hostvars: dict[str, dict[str, Any]] = (listing.get("_meta") or {}).get("hostvars") or {}
    common = (listing.get("all") or {}).get("vars") or {}
    monitors = (listing.get("monitoring") or {}).get("hosts") or []
    views = [{**common, **(hostvars.get(h) or {})} for h in monitors] or [common]
    found: dict[str, Any] = {}
    for key in ("hastack_alert_receivers", "hastack_alert_smtp", "hastack_alert_rules"):
        values = {json.dumps(v.get(key), sort_keys=True) for v in views}
        if len(values) > 1:
            raise HastackError(f"{where}: the monitoring machines disagree on {key}; both "
                               "Alertmanagers need the same settings: set it once, in all.vars")
        found[key] = views[0].get(key)
    return found


def check_inventory(listing: dict[str, Any], inventory: Path) -> None:
    """Everything alerting-related in an inventory, before anything changes."""
    where = inventory.resolve()
    found = settings(listing, inventory)
    try:
        receivers = check_receivers(found["hastack_alert_receivers"])
        check_smtp(found["hastack_alert_smtp"], receivers)
        check_rules(found["hastack_alert_rules"])
    except HastackError as exc:
        raise HastackError(f"{where}: {exc}") from None
