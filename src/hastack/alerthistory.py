"""Client of the alert history (hastack-alert-receiver on each monitoring machine).

Alertmanager posts every notification there; the history keeps each one with the moment it
arrived (`received_at`) and how many times it was delivered (`deliveries`: 1 means exactly
once, also with two clustered Alertmanagers). Tests and benchmarks measure detection as
`received_at` minus the moment of the fault: the lab's machines share the host's clock.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import httpx

HISTORY_PORT = 9095  # monitoring_alert_history_port in the monitoring role's defaults


def _stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds")


def events(address: str, alertname: str | None = None, status: str | None = None,
           since: float | None = None, timeout: float = 5) -> list[dict[str, Any]]:
    """Notifications received by the history at `address` (a monitoring machine's private
    address), optionally only one alert, one status, received at or after `since` (epoch s,
    second resolution: one second earlier is asked for and filtered here)."""
    params = {k: v for k, v in (("alertname", alertname), ("status", status)) if v}
    if since is not None:
        params["since"] = _stamp(since - 1)
    r = httpx.get(f"http://{address}:{HISTORY_PORT}/alerts", params=params, timeout=timeout)
    r.raise_for_status()
    found = r.json()["alerts"]
    if since is not None:
        found = [e for e in found if received_at(e) >= since - 1]
    return found


def received_at(event: dict[str, Any]) -> float:
    """Epoch seconds at which the history received the event."""
    return datetime.fromisoformat(event["received_at"]).timestamp()


def matches(event: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(event.get("labels", {}).get(k) == v for k, v in labels.items())


def wait_for(address: str, alertname: str, status: str, since: float, timeout: float,
             labels: dict[str, str] | None = None, interval: float = 0.5
             ) -> dict[str, Any] | None:
    """The first `status` notification of `alertname` (with these labels) received after
    `since`; None if none arrived within `timeout` seconds. The history being briefly
    unreachable (its machine restarting) counts as not yet."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            found = [e for e in events(address, alertname, status, since)
                     if matches(e, labels or {})]
        except httpx.HTTPError:
            found = []
        if found:
            return min(found, key=received_at)
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval)


def budget_seconds(event: dict[str, Any]) -> float | None:
    """The rule's stated detection budget (its `budget` annotation, e.g. 25s, 1m30s)."""
    text = str(event.get("annotations", {}).get("budget", ""))
    total, number = 0.0, ""
    units = {"h": 3600, "m": 60, "s": 1}
    for ch in text:
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in units and number:
            total += float(number) * units[ch]
            number = ""
        else:
            return None
    return total if text and not number else None
