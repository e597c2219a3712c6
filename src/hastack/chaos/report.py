"""A chaos run's report: chaos.json (everything), chaos.md (the tables) and one PNG per
fault (requests/s, errors/s and p99 over time, the fault's start and heal marked).

matplotlib is imported only when a plot is drawn (the CLI starts without it).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path("docs/chaos")


def _f(value: Any, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:g}{unit}"
    return f"{value}{unit}"


def _window(w: list[float] | None) -> str:
    return "none" if not w else f"{w[0]:+.2f} → {w[1]:+.2f} s"


def _kind(r: dict[str, Any], kind: str) -> str:
    row = r["requests"].get(kind)
    if not row:
        return "–"
    causes = r.get("failure_causes", {}).get(kind, {})
    why = ", ".join(f"{c} ×{n}" for c, n in sorted(causes.items(), key=lambda x: (-x[1], x[0])))
    return f"{row['ok']}/{row['failed']}" + (f" ({why})" if why else "")


def _slowest(r: dict[str, Any]) -> str:
    slowest = r.get("slowest_ok_ms") or {}
    return f"{_f(slowest.get('read'))} / {_f(slowest.get('write'), ' ms')}"


def _by_detection(data: dict[str, Any]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for r in data["faults"]:
        out.setdefault(r["detection_measured_by"], []).append(r["fault"])
    return out


def markdown(data: dict[str, Any], pngs: dict[str, str]) -> str:
    load, audit = data["load"], data["audit"]
    lines = [
        "# Chaos run",
        "",
        f"Made by `{data['command']}` (src/hastack/chaos/), run {data['started']} → "
        f"{data['finished']} (UTC) on a host with {data['host']['cores']} cores "
        f"({data['host']['machine']}, Python {data['host']['python']}).",
        "",
        f"Load generator: {load['generator']}; {load['rate_per_s']:g} requests/s, "
        f"{load['write_share']} a write (POST /messages with its own Idempotency-Key), the "
        f"others GET /api/messages?limit=20; round-robin over {', '.join(load['addresses'])} "
        f"({load['resolved_by']}); a request has {load['timeout_s']:g} s. Each fault is held "
        f"{data['fault_seconds']:g} s, then healed; the next one starts once the whole stack "
        "is healthy again. Times are seconds from the fault's injection.",
        "",
        "| fault | expect | reads ok/failed | writes ok/failed | error window | detected | "
        "restored | healthy after heal | p50 / p99 | p99 from +2 s | slowest answered read / "
        "write | slowest refused write | lost | twice |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in data["faults"]:
        lines.append(
            f"| {r['fault']} | {r['expect']} | {_kind(r, 'read')} | {_kind(r, 'write')} | "
            f"{_window(r['error_window'])} | {_f(r['detection_s'], ' s')} | "
            f"{_f(r['service_restored_s'], ' s')} | {_f(r['healthy_after_heal_s'], ' s')} | "
            f"{_f(r['p50_ms'])} / {_f(r['p99_ms'], ' ms')} | "
            f"{_f(r.get('p99_settled_ms'), ' ms')} | {_slowest(r)} | "
            f"{_f(r['write_refused_max_ms'], ' ms')} | {r.get('writes_lost', '–')} | "
            f"{r.get('writes_applied_twice', '–')} |")
    lines += [
        "",
        "expect: `all` no request may fail; `reads` no read may fail (writes may be refused "
        "while there is no primary); `bounded` failures are measured, not gated.",
        "",
        "Detection is measured as: " + "; ".join(
            f"{how} ({', '.join(names)})" for how, names in _by_detection(data).items()) + ".",
        "A detection of – (where one is measured) means it was not seen while the fault "
        "and its heal lasted: a daemon systemd restarts within ~1 s falls between two "
        "scrapes (5 s), and no Prometheus is left to see its own machine powered off when "
        "it is the only one.",
        "p99 from +2 s: of the requests sent from 2 s after the injection to the heal "
        "(what the fault costs once the stack has routed around it).",
        "Restored: end of the first success after the last failure. Healthy after heal: "
        "until every machine is `ok` in `hastack status`, every web server UP on every LB, "
        "replication running and each VIP on its master.",
        "",
        "## Writes",
        "",
        f"{audit['writes']} writes sent, {audit['acknowledged']} acknowledged; checked on "
        f"{', '.join(audit['nodes'])} by id and by idempotency key: **{audit['lost']} lost, "
        f"{audit['duplicated']} applied twice**; {audit['unacknowledged_applied']} writes "
        "that failed on the client were applied once (a resend with the same key gets "
        "their first answer).",
        "",
        "## Verdict",
        "",
    ]
    lines += [f"- {v}" for v in data["verdict"]] or ["Every promise kept."]
    if data.get("goals"):
        lines += ["", "## Goals", "", "| goal | met | measured |", "|---|---|---|"]
        lines += [f"| {g['goal']} | {'yes' if g['met'] else '**no**'} | {g['measured']} |"
                  for g in data["goals"]]
    lines += ["", "## Plots", ""]
    for r in data["faults"]:
        if r["fault"] in pngs:
            lines += [f"### {r['fault']} ({r['what']})", "", f"![{r['fault']}]({pngs[r['fault']]})",
                      ""]
    return "\n".join(lines) + "\n"


def plot(result: dict[str, Any], path: Path) -> None:
    """requests/s and errors/s (left axis), p99 (right axis) over time, one PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = result["series"]
    t = [p["t"] for p in points]
    fig = Figure(figsize=(7.5, 3.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(t, [p["requests_per_s"] for p in points], label="requests/s", color="tab:blue")
    ax.plot(t, [p["errors_per_s"] for p in points], label="errors/s", color="tab:red")
    ax.set_xlabel("seconds from fault")
    ax.set_ylabel("per second")
    right = ax.twinx()
    right.plot(t, [p["p99_ms"] for p in points], label="p99 ms", color="tab:gray",
               linestyle="--")
    right.set_ylabel("p99 (ms)")
    right.set_yscale("log")
    ax.axvline(0, color="black", linewidth=1)
    ax.axvline(result["healed_at_s"], color="green", linewidth=1)
    ax.annotate("fault", (0, 1), xycoords=("data", "axes fraction"), fontsize=8,
                va="top", ha="right")
    ax.annotate("heal", (result["healed_at_s"], 1), xycoords=("data", "axes fraction"),
                fontsize=8, va="top", ha="left")
    ax.set_title(f"{result['fault']}: {result['what']}", fontsize=10)
    handles = ax.get_legend_handles_labels()
    extra = right.get_legend_handles_labels()
    ax.legend(handles[0] + extra[0], handles[1] + extra[1], fontsize=8, loc="center right")
    fig.tight_layout()
    fig.savefig(path, format="png")


def write(data: dict[str, Any], directory: Path) -> dict[str, Path]:
    """chaos.json, chaos.md and <fault>.png under directory (made if missing)."""
    directory.mkdir(parents=True, exist_ok=True)
    pngs: dict[str, str] = {}
    for r in data["faults"]:
        if r["series"]:
            name = f"{r['fault']}.png"
            plot(r, directory / name)
            pngs[r["fault"]] = name
    (directory / "chaos.json").write_text(json.dumps(data, indent=2) + "\n")
    (directory / "chaos.md").write_text(markdown(data, pngs))
    return {"json": directory / "chaos.json", "markdown": directory / "chaos.md"}
