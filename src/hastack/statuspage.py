"""hastack-status-page: `hastack status` as a web page on each monitoring machine's private
address, with the last hour of traffic, errors, latency and replication lag plotted.

  GET /                  the page: HTML, no external assets, reloads itself every 30 s
  GET /api/status        the JSON object hastack.status.collect() returns
  GET /plots/<name>.png  one plot (hastack.statusplots.PLOTS), last hour, 15 s step
  GET /healthz           200 "ok"

The data is hastack.status's: collect() for the screen, collect_ranges() for the plots, this
machine's Prometheus and Alertmanager first (--machine), the other monitoring machine's if
they do not answer. The topology is /opt/hastack-status-page/inventory.json (not under
/etc/hastack, which only the TLS group may enter), rendered by Ansible from its own groups
and hostvars in the shape hastack.inventory.build() returns, so the page works the same
for the lab and for real servers.

Runs on the monitoring machines from a venv holding only hastack's wheel, httpx and
matplotlib: it imports nothing else of hastack but status, topology and errors.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hastack import status, statusplots
from hastack.errors import HastackError
from hastack.topology import Topology, from_inventory

REFRESH_SECONDS = 30
# One operator reloading, or several: Prometheus is asked at most this often.
SCREEN_CACHE_SECONDS = 5
PLOT_CACHE_SECONDS = statusplots.STEP_SECONDS
PLOT_PATH = re.compile(r"^/plots/([a-z0-9_]+)\.png$")

HEALTH_CLASS = {"ok": "ok", "degraded": "warn", "down": "bad", "unknown": "dim"}
STATE_CLASS = {"UP": "ok", "DOWN": "bad"}

STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.2em 2em; color: #222; }
h1 { font-size: 1.4em; margin: 0 0 .2em; } h2 { font-size: 1.1em; margin: 1.4em 0 .4em; }
table { border-collapse: collapse; } td, th { padding: .2em .8em .2em 0; text-align: left;
  vertical-align: top; } th { border-bottom: 1px solid #aaa; font-weight: 600; }
.ok { color: #17752b; } .warn { color: #a15c00; font-weight: 600; }
.bad { color: #b00020; font-weight: 700; } .dim { color: #777; }
.banner { background: #fde8e8; border: 1px solid #b00020; padding: .5em 1em; }
.plots { display: flex; flex-wrap: wrap; gap: 1em; } .plots img { border: 1px solid #ddd; }
footer { margin-top: 2em; color: #777; }
"""


def load_topology(path: Path) -> Topology:
    """The topology from the inventory JSON Ansible rendered (one clear error if not)."""
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise HastackError(f"{path}: cannot read the inventory ({exc.strerror})") from None
    except ValueError as exc:
        raise HastackError(f"{path}: not valid JSON ({exc})") from None
    return from_inventory(data, str(path))


# ---- the page (pure: data in, HTML out) ------------------------------------------------------

def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _flag(value: bool | None, yes: str = "ok", no: str = "FAIL") -> str:
    if value is None:
        return '<span class="dim">?</span>'
    return f'<span class="ok">{yes}</span>' if value else f'<span class="bad">{no}</span>'


def _number(value: float | None, fmt: str, unit: str = "") -> str:
    return "?" if value is None else f"{value:{fmt}}{unit}"


def _table(head: list[str], rows: list[str]) -> str:
    cells = "".join(f"<th>{_e(h)}</th>" for h in head)
    return f"<table><tr>{cells}</tr>\n" + "\n".join(rows) + "\n</table>"


def _alerts(screen: dict[str, Any]) -> str:
    alerts = screen.get("alerts") or []
    out = [f'<h2>Alerts: {len(alerts) or "none"} firing</h2>']
    if screen.get("alerts_error"):
        out.append(f'<p class="warn">Alertmanager did not answer: '
                   f'{_e(screen["alerts_error"])}</p>')
    if alerts:
        rows = []
        for a in alerts:
            where = " ".join(f"{k}={v}" for k, v in sorted(a["labels"].items())
                             if k in ("machine", "vip", "tier"))
            css = "bad" if a["severity"] == "critical" else "warn"
            rows.append(f'<tr class="alert"><td class="{css}">{_e(a["severity"] or "-")}</td>'
                        f'<td>{_e(a["alertname"])}</td><td>{_e(a["summary"])}</td>'
                        f"<td>{_e(where)}</td><td>{_e(a['since'])}</td></tr>")
        out.append(_table(["severity", "alert", "summary", "where", "since"], rows))
    return "\n".join(out)


def _traffic(screen: dict[str, Any]) -> str:
    t = screen.get("traffic") or {}
    ratio = t.get("error_ratio")
    p99 = t.get("p99_seconds")
    return (f'<p id="traffic">Traffic at the edge: '
            f'<b>{_number(t.get("requests_per_s"), ".1f", " req/s")}</b>, 5xx '
            f'<b>{_number(t.get("errors_5xx_per_s"), ".2f", "/s")}</b>'
            + (f" ({ratio:.2%})" if ratio is not None else "")
            + f', app p99 <b>{_number(None if p99 is None else p99 * 1000, ".0f", " ms")}</b>'
            "</p>")


def _machines(topo: Topology, screen: dict[str, Any]) -> str:
    seen = screen.get("machines") or {}
    rows = []
    for m in topo.machines:
        info = seen.get(m.name) or {"health": "unknown", "daemons": {}, "problems": []}
        health = info["health"]
        not_active = [f"{u}: {s}" for u, s in sorted(info["daemons"].items()) if s != "active"]
        detail = ", ".join(info.get("problems") or not_active) or "all active"
        rows.append(f'<tr id="machine-{_e(m.name)}"><td>{_e(m.name)}</td>'
                    f'<td>{_e(", ".join(m.roles))}</td><td>{_e(", ".join(m.addresses))}</td>'
                    f'<td class="health {HEALTH_CLASS.get(health, "bad")}">{_e(health)}</td>'
                    f"<td>{_e(detail)}</td></tr>")
    return "<h2>Machines</h2>\n" + _table(
        ["machine", "roles", "addresses", "health", "daemons"], rows)


def _vips(screen: dict[str, Any]) -> str:
    rows = []
    for vip, v in (screen.get("vips") or {}).items():
        holders = v["holders"]
        held = ('<span class="dim">?</span>' if holders is None else
                _e(", ".join(holders)) if holders else '<span class="bad">NOBODY</span>')
        if holders and len(holders) > 1:
            held = f'<span class="bad">{held}</span>'
        cert = _number(v["cert_days_left"], ".0f", " days")
        rows.append(f'<tr id="vip-{_e(vip)}"><td>{_e(vip)}</td><td class="holders">{held}</td>'
                    f"<td>{_flag(v['site_probe'])}</td><td>{_flag(v['dns_answer'])}</td>"
                    f"<td>{_e(cert)}</td></tr>")
    return "<h2>VIPs</h2>\n" + _table(
        ["VIP", "held by", "site probe", "DNS answer", "certificate"], rows)


def _backends(screen: dict[str, Any]) -> str:
    rows = []
    for lb, backends in (screen.get("backends") or {}).items():
        if not backends:
            rows.append(f'<tr><td>{_e(lb)}</td><td colspan="2" class="dim">no data</td></tr>')
        for proxy, servers in backends.items():
            states = " ".join(
                f'<span class="{STATE_CLASS.get(state, "warn")}">{_e(server)} {_e(state)}</span>'
                for server, state in servers.items())
            rows.append(f"<tr><td>{_e(lb)}</td><td>{_e(proxy)}</td><td>{states}</td></tr>")
    return "<h2>Load balancers' backends</h2>\n" + _table(["LB", "backend", "servers"], rows)


def _databases(screen: dict[str, Any]) -> str:
    rows = []
    for db in screen.get("databases") or []:
        role = db["role"]
        css = {"primary": "ok", "replica": "ok", "down": "bad"}.get(role, "warn")
        threads = ("-" if db["io_running"] is None else
                   _flag(bool(db["io_running"] and db["sql_running"]), "running", "STOPPED"))
        read_only = {None: "?", True: "ON", False: "OFF"}[db["read_only"]]
        replicating = db["io_running"] is not None or db["lag_seconds"] is not None
        lag = _number(db["lag_seconds"], ".0f", " s") if replicating else "-"
        rows.append(f'<tr id="db-{_e(db["name"])}"><td>{_e(db["name"])}</td>'
                    f'<td class="role {css}">{_e(role)}</td><td>{read_only}</td>'
                    f"<td>{_e(db['replicating_from'] or '-')}</td><td>{threads}</td>"
                    f"<td>{_e(lag)}</td></tr>")
    return "<h2>Databases</h2>\n" + _table(
        ["node", "role", "read_only", "replicating from", "threads", "lag"], rows)


def _plots() -> str:
    width, height = (int(x * statusplots.DPI) for x in statusplots.SIZE_INCHES)
    images = "\n".join(
        f'<img src="plots/{p.name}.png" alt="{_e(p.title)}" width="{width}" '
        f'height="{height}">' for p in statusplots.PLOTS)
    return f'<h2>The last hour</h2>\n<div class="plots">\n{images}\n</div>'


def render_page(topo: Topology, screen: dict[str, Any], now: float,
                refresh: int = REFRESH_SECONDS) -> str:
    """The whole page: what `hastack status` shows, then the plots."""
    when = datetime.fromtimestamp(now, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    vips = ", ".join(str(v.address) for v in topo.vips)
    parts = [f"<h1>{_e(topo.domain)}</h1>",
             f"<p>VIPs {_e(vips)} &middot; {_e(when)} &middot; data from "
             f"{_e(screen.get('source') or 'nobody')}</p>"]
    if screen.get("error"):
        parts.append(f'<p class="banner">Monitoring unavailable: {_e(screen["error"])}</p>')
    parts += [_alerts(screen), _traffic(screen), _machines(topo, screen), _vips(screen),
              _backends(screen), _databases(screen), _plots()]
    links = ""
    if screen.get("source"):
        prometheus = _e(screen["source"])
        links = f' &middot; ad-hoc queries: <a href="{prometheus}/graph">Prometheus</a>'
    parts.append(f"<footer>hastack-status-page &middot; reloads every {refresh} s{links}"
                 "</footer>")
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">\n'
            f'<meta http-equiv="refresh" content="{refresh}">\n'
            f"<title>{_e(topo.domain)}: status</title>\n<style>{STYLE}</style>\n"
            f"</head><body>\n{body}\n</body></html>\n")


# ---- the service ---------------------------------------------------------------------------

class StatusPage:
    """Answers the page's requests from hastack.status, caching what Prometheus said for a
    few seconds so that reloads and several viewers cost one round of queries."""

    def __init__(self, topo: Topology, machine: str | None = None,
                 get: status.Getter | None = None, clock: Callable[[], float] = time.time):
        self.topo = topo
        self.machine = machine
        self.get = get
        self.clock = clock
        self._lock = threading.Lock()
        self._screen: tuple[float, dict[str, Any]] | None = None
        self._ranges: tuple[float, dict[str, Any]] | None = None
        self._pngs: dict[str, bytes] = {}

    def screen(self) -> dict[str, Any]:
        now = self.clock()
        with self._lock:
            if self._screen and now - self._screen[0] < SCREEN_CACHE_SECONDS:
                return self._screen[1]
        screen = status.collect(self.topo, self.get, first=self.machine)
        with self._lock:
            self._screen = (now, screen)
        return screen

    def page(self) -> str:
        return render_page(self.topo, self.screen(), self.clock())

    def plot(self, name: str) -> bytes | None:
        """PNG of one plot, None for an unknown name."""
        plot = statusplots.BY_NAME.get(name)
        if plot is None:
            return None
        with self._lock:  # one fetch and one drawing at a time; later viewers get the cache
            now = self.clock()
            if not self._ranges or now - self._ranges[0] >= PLOT_CACHE_SECONDS:
                start = now - statusplots.WINDOW_SECONDS
                ranges = status.collect_ranges(self.topo, start, now,
                                               statusplots.STEP_SECONDS, self.get,
                                               first=self.machine)
                self._ranges = (now, ranges)
                self._pngs = {}
            if name not in self._pngs:
                at, ranges = self._ranges
                empty = "no data" if not ranges["error"] else "Prometheus did not answer"
                self._pngs[name] = statusplots.render(
                    plot, ranges["series"].get(name, []), at - statusplots.WINDOW_SECONDS, at,
                    empty)
            return self._pngs[name]


def handler(page: StatusPage) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "hastack-status-page"

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            try:
                if path == "/":
                    self._send(200, "text/html; charset=utf-8", page.page().encode())
                elif path == "/api/status":
                    self._send(200, "application/json", json.dumps(page.screen()).encode())
                elif path == "/healthz":
                    self._send(200, "text/plain", b"ok\n")
                elif (m := PLOT_PATH.match(path)) and (png := page.plot(m[1])) is not None:
                    self._send(200, "image/png", png)
                else:
                    self._send(404, "text/plain", b"not found\n")
            except Exception as exc:  # noqa: BLE001 - one bad request must not stop the page
                print(f"error: GET {path}: {type(exc).__name__}: {exc}", file=sys.stderr)
                self._send(500, "text/plain", f"error: {type(exc).__name__}\n".encode())

        def _send(self, code: int, content_type: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # a reload every 30 s per viewer: errors only (above)

    return Handler


def parse_listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise HastackError(f"--listen {text}: expected ADDRESS:PORT, e.g. 198.19.0.61:9096")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hastack-status-page", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", required=True, help="ADDRESS:PORT")
    parser.add_argument("--inventory", type=Path,
                        default=Path("/opt/hastack-status-page/inventory.json"))
    parser.add_argument("--machine", help="this machine's inventory name: its Prometheus and "
                                          "Alertmanager are asked first")
    args = parser.parse_args(argv)
    try:
        address = parse_listen(args.listen)
        topo = load_topology(args.inventory)
        server = ThreadingHTTPServer(address, handler(StatusPage(topo, args.machine)))
    except (HastackError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"hastack-status-page on http://{args.listen}/ ({len(topo.machines)} machines)",
          flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
