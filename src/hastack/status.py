"""The operator's one screen, from what the monitoring machines know.

`build()` is pure: given the topology, Prometheus' answers to QUERIES (the JSON of
/api/v1/query) and Alertmanager's alerts (/api/v2/alerts), it returns one dict:

    machines   per machine: health (ok | degraded | down | unknown), each daemon's systemd
               state (from node-exporter), each scrape job's up
    vips       per VIP: the LBs holding it (None: no LB reports it), the site probe through
               it, the DNS answer for it, days until the certificate it serves expires
    backends   per LB, per backend: each server's state (UP, DOWN, MAINT, DRAIN, NOLB)
    databases  per DB node: role (primary | replica | unconfigured | down | unknown), read_only,
               replication threads, lag
    alerts     the firing alerts, critical first
    traffic    requests/s and 5xx/s at the edge, their ratio, the app's p99 (seconds)

`collect()` asks a monitoring machine over HTTP (the first that answers) and calls build();
it never raises for an unreachable monitoring machine: the result then says why in `error`.
`collect_ranges()` asks the same way for RANGE_QUERIES over a time range (the status page's
plots).
`merge()` adds that to `hastack status --json`'s object under the new key `monitoring` (and
`health`/`daemons` on each machine), changing none of the keys already there.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import httpx

from hastack.topology import Topology

PROMETHEUS_PORT = 9090     # monitoring_prometheus_port in the monitoring role's defaults
ALERTMANAGER_PORT = 9093   # monitoring_alertmanager_port

# The systemd units each role runs (node-exporter's systemd collector reports their state).
ROLE_UNITS = {
    "loadbalancer": ("haproxy", "keepalived", "fail2ban"),
    "web": ("nginx", "prometheus-nginx-exporter"),
    "app": ("foobar",),
    "db-primary": ("mariadb", "prometheus-mysqld-exporter"),
    "db-replica": ("mariadb", "prometheus-mysqld-exporter"),
    "dns": ("dnsmasq",),
    "monitoring": ("prometheus", "prometheus-alertmanager", "prometheus-blackbox-exporter",
                   "hastack-alert-receiver", "hastack-status-page"),
    "backup": ("hastack-db-backup.timer", "hastack-db-restore-drill.timer",
               "hastack-binlog-follow"),
    "quorum": ("corosync-qnetd",),
}
# With two or more DB nodes the failover cluster runs MariaDB (mariadb.service stays off).
CLUSTER_DB_UNITS = ("corosync", "pacemaker", "hastack-replica-release",
                    "prometheus-mysqld-exporter")
EVERY_MACHINE_UNITS = ("prometheus-node-exporter",)
# The scrape jobs that target each role's machines (prometheus.yml.j2).
ROLE_JOBS = {
    "loadbalancer": ("haproxy",),
    "web": ("nginx",),
    "app": ("site",),
    "db-primary": ("mysqld",),
    "db-replica": ("mysqld",),
    "monitoring": ("prometheus", "alertmanager"),
}


def role_units(topo: Topology, role: str) -> tuple[str, ...]:
    """The systemd units a machine of `role` runs in this topology."""
    db_nodes = len(topo.with_role("db-primary")) + len(topo.with_role("db-replica"))
    if role in ("db-primary", "db-replica") and db_nodes > 1:
        return CLUSTER_DB_UNITS
    return ROLE_UNITS.get(role, ())


def _units() -> list[str]:
    """Full unit names: a name without a type is a service."""
    names = ({u for units in ROLE_UNITS.values() for u in units} | set(EVERY_MACHINE_UNITS)
             | set(CLUSTER_DB_UNITS))
    return sorted(u if "." in u else f"{u}.service" for u in names)


QUERIES = {
    "up": "up",
    "units": 'node_systemd_unit_state{name=~"('
             + "|".join(u.replace(".", "\\\\.") for u in _units()) + ')"} == 1',
    "vip_held": "hastack_vrrp_vip_held",
    "servers": "haproxy_server_status == 1",
    "mysql_up": "mysql_up",
    "read_only": "mysql_global_variables_read_only",
    "io_running": "mysql_slave_status_slave_io_running",
    "sql_running": "mysql_slave_status_slave_sql_running",
    "lag": "mysql_slave_status_seconds_behind_master",
    "probes": "probe_success",
    "cert_expiry": 'probe_ssl_earliest_cert_expiry{probe="site"} - time()',
    "requests": 'sum(rate(haproxy_frontend_http_requests_total{proxy="www"}[1m]))',
    "errors_5xx": 'sum(rate(haproxy_frontend_http_responses_total{proxy="www",code="5xx"}[1m]))',
    "p99": "histogram_quantile(0.99, sum by (le) "
           "(rate(foobar_http_request_duration_seconds_bucket[1m])))",
}

# The status page's plots (hastack.statuspage): the same expressions over the last hour,
# asked with /api/v1/query_range. The 5xx plot is the share of edge responses (the ratio
# SiteErrorRatioHigh watches); it has no value while no request arrives.
RANGE_QUERIES = {
    "requests": QUERIES["requests"],
    "error_ratio": f"{QUERIES['errors_5xx']} / {QUERIES['requests']}",
    "p99": QUERIES["p99"],
    "lag": QUERIES["lag"],
}

Sample = tuple[dict[str, str], float | None]
Series = tuple[dict[str, str], list[tuple[float, float | None]]]


def samples(answer: Any) -> list[Sample]:
    """(labels, value) pairs of one /api/v1/query answer (vector or scalar); NaN -> None."""
    if not isinstance(answer, dict) or answer.get("status") != "success":
        return []
    data = answer.get("data") or {}
    result = data.get("result")
    if data.get("resultType") == "scalar" and isinstance(result, list):
        return [({}, _number(result[1]))]
    if data.get("resultType") != "vector" or not isinstance(result, list):
        return []
    return [(dict(r.get("metric") or {}), _number((r.get("value") or [None, None])[1]))
            for r in result]


def series(answer: Any) -> list[Series]:
    """(labels, [(unix time, value)]) of one /api/v1/query_range answer (a matrix); NaN ->
    None."""
    if not isinstance(answer, dict) or answer.get("status") != "success":
        return []
    data = answer.get("data") or {}
    result = data.get("result")
    if data.get("resultType") != "matrix" or not isinstance(result, list):
        return []
    out = []
    for r in result:
        points = [(float(p[0]), _number(p[1])) for p in r.get("values") or []
                  if isinstance(p, list) and len(p) == 2]
        out.append((dict(r.get("metric") or {}), points))
    return out


def _number(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) or math.isinf(value) else value


def _one(answers: dict[str, Any], name: str) -> float | None:
    found = samples(answers.get(name))
    return found[0][1] if found else None


def build(topo: Topology, answers: dict[str, Any], alerts: Any) -> dict[str, Any]:
    """The screen's data from Prometheus' answers (keyed like QUERIES) and Alertmanager's
    /api/v2/alerts list."""
    return {
        "machines": _machines(topo, answers),
        "vips": _vips(topo, answers),
        "backends": _backends(topo, answers),
        "databases": _databases(topo, answers),
        "alerts": _alerts(alerts),
        "traffic": _traffic(answers),
    }


def _machines(topo: Topology, answers: dict[str, Any]) -> dict[str, Any]:
    up: dict[str, dict[str, bool]] = {}
    for labels, value in samples(answers.get("up")):
        if "machine" in labels:
            up.setdefault(labels["machine"], {})[labels.get("job", "?")] = value == 1
    states: dict[str, dict[str, str]] = {}
    for labels, _ in samples(answers.get("units")):
        unit = labels.get("name", "").removesuffix(".service")
        if "machine" in labels and "state" in labels:
            states.setdefault(labels["machine"], {})[unit] = labels["state"]
    out: dict[str, Any] = {}
    for m in topo.machines:
        units = list(EVERY_MACHINE_UNITS)
        jobs = ["node"]
        for role in m.roles:
            units += [u for u in role_units(topo, role) if u not in units]
            jobs += [j for j in ROLE_JOBS.get(role, ()) if j not in jobs]
        scraped = up.get(m.name, {})
        scrapes = {job: scraped.get(job) for job in jobs}
        node_up = scrapes["node"]
        daemons = {u: states.get(m.name, {}).get(u, "unknown") for u in units}
        if node_up is None:
            health = "unknown"  # not (yet) scraped: a new machine, or monitoring is behind
        elif not node_up:
            health = "down"
            daemons = dict.fromkeys(units, "unknown")
        elif all(s == "active" for s in daemons.values()) and all(scrapes.values()):
            health = "ok"
        else:
            health = "degraded"
        problems = [f"{u} {s}" for u, s in daemons.items() if s != "active"]
        problems += [f"{j} not scraped" for j, ok in scrapes.items() if ok is False]
        out[m.name] = {"health": health, "daemons": daemons, "scrapes": scrapes,
                       "problems": problems if health == "degraded" else []}
    return out


def _vips(topo: Topology, answers: dict[str, Any]) -> dict[str, Any]:
    # holders: None until some LB reports the VIP at all (then a list, possibly empty)
    vips = {str(v.address): {"holders": None, "site_probe": None, "dns_answer": None,
                             "cert_days_left": None} for v in topo.vips}
    for labels, value in samples(answers.get("vip_held")):
        vip = vips.get(labels.get("vip", ""))
        if vip is not None and labels.get("machine"):
            held = {labels["machine"]} if value == 1 else set()
            vip["holders"] = sorted({*(vip["holders"] or []), *held})
    for labels, value in samples(answers.get("probes")):
        vip = vips.get(labels.get("vip", ""))
        key = {"site": "site_probe", "dns": "dns_answer"}.get(labels.get("probe", ""))
        if vip is not None and key and value is not None:
            # several probers (two monitoring machines, several name servers): all must pass
            vip[key] = (value == 1) if vip[key] is None else (vip[key] and value == 1)
    for labels, value in samples(answers.get("cert_expiry")):
        vip = vips.get(labels.get("vip", ""))
        if vip is not None and value is not None:
            days = round(value / 86400, 1)
            old = vip["cert_days_left"]
            vip["cert_days_left"] = days if old is None else min(old, days)
    return vips


def _backends(topo: Topology, answers: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, dict[str, dict[str, str]]] = {
        m.name: {} for m in topo.with_role("loadbalancer")}
    for labels, _ in samples(answers.get("servers")):
        lb, proxy, server = labels.get("machine"), labels.get("proxy"), labels.get("server")
        if lb in out and proxy and server:
            out[lb].setdefault(proxy, {})[server] = labels.get("state", "?")
    return {lb: {p: dict(sorted(s.items())) for p, s in sorted(backends.items())}
            for lb, backends in out.items()}


def _databases(topo: Topology, answers: dict[str, Any]) -> list[dict[str, Any]]:
    def by_machine(name: str) -> dict[str, Sample]:
        return {labels["machine"]: (labels, value) for labels, value in samples(answers.get(name))
                if "machine" in labels}

    up, ro = by_machine("mysql_up"), by_machine("read_only")
    io, sql, lag = by_machine("io_running"), by_machine("sql_running"), by_machine("lag")
    out = []
    for m in topo.machines:
        if not {"db-primary", "db-replica"} & set(m.roles):
            continue
        node: dict[str, Any] = {
            "name": m.name, "role": "unknown", "up": None, "read_only": None,
            "replicating_from": None, "io_running": None, "sql_running": None,
            "lag_seconds": None, "topology_role": "primary" if "db-primary" in m.roles
            else "replica"}
        if m.name in up:
            node["up"] = up[m.name][1] == 1
        if m.name in ro and ro[m.name][1] is not None:
            node["read_only"] = ro[m.name][1] == 1
        if m.name in io:
            node["replicating_from"] = io[m.name][0].get("master_host")
            node["io_running"] = io[m.name][1] == 1
        if m.name in sql:
            node["sql_running"] = sql[m.name][1] == 1
        if m.name in lag:
            node["lag_seconds"] = lag[m.name][1]
        if node["up"] is False:
            node["role"] = "down"
        elif node["read_only"] is False:
            node["role"] = "primary"
        elif node["read_only"] is True:
            node["role"] = "replica" if node["replicating_from"] else "unconfigured"
        out.append(node)
    return out


SEVERITY_ORDER = {"critical": 0, "warning": 1}


def _alerts(alerts: Any) -> list[dict[str, Any]]:
    if not isinstance(alerts, list):
        return []
    out = []
    for a in alerts:
        if not isinstance(a, dict):
            continue
        if (a.get("status") or {}).get("state", "active") != "active":
            continue  # silenced or inhibited: someone already knows
        labels = a.get("labels") or {}
        out.append({
            "alertname": labels.get("alertname", "?"),
            "severity": labels.get("severity", ""),
            "summary": (a.get("annotations") or {}).get("summary", ""),
            "since": a.get("startsAt", ""),
            "labels": {k: v for k, v in labels.items()
                       if k not in ("alertname", "severity", "job", "instance")},
            "fingerprint": a.get("fingerprint", ""),
        })
    return sorted(out, key=lambda a: (SEVERITY_ORDER.get(a["severity"], 9), a["since"],
                                      a["alertname"]))


def _traffic(answers: dict[str, Any]) -> dict[str, float | None]:
    requests, errors = _one(answers, "requests"), _one(answers, "errors_5xx")
    ratio = errors / requests if requests and errors is not None else None
    return {"requests_per_s": requests, "errors_5xx_per_s": errors, "error_ratio": ratio,
            "p99_seconds": _one(answers, "p99")}


# ---- talking to the monitoring machines (the integrator's entry point) --------------------

Getter = Callable[[str, dict[str, str]], Any]


def endpoints(topo: Topology, first: str | None = None) -> list[tuple[str, str]]:
    """(Prometheus URL, Alertmanager URL) of each monitoring machine (private addresses);
    the machine named `first` (a status page asking its own machine) before the others."""
    machines = sorted(topo.with_role("monitoring"), key=lambda m: m.name != first)
    return [(f"http://{m.private_address}:{PROMETHEUS_PORT}",
             f"http://{m.private_address}:{ALERTMANAGER_PORT}")
            for m in machines]


def _http_get(timeout: float) -> Getter:
    def get(url: str, params: dict[str, str]) -> Any:
        response = httpx.get(url, params=params, timeout=timeout)
        response.raise_for_status()
        return response.json()
    return get


def collect(topo: Topology, get: Getter | None = None, timeout: float = 2.0,
            first: str | None = None) -> dict[str, Any]:
    """Ask the first monitoring machine that answers (`first` before the others); never
    raises for an unreachable one."""
    get = get or _http_get(timeout)
    places = endpoints(topo, first)
    if not places:
        return {"source": None, "error": "no machine with role monitoring in the topology"}
    errors = []
    for prometheus, alertmanager in places:
        try:
            answers = {name: get(f"{prometheus}/api/v1/query", {"query": q})
                       for name, q in QUERIES.items()}
        except (httpx.HTTPError, ValueError) as exc:
            errors.append(f"{prometheus}: {str(exc) or type(exc).__name__}")
            continue
        try:
            alerts = get(f"{alertmanager}/api/v2/alerts",
                         {"active": "true", "silenced": "false", "inhibited": "false"})
            alert_error = None
        except (httpx.HTTPError, ValueError) as exc:
            alerts, alert_error = [], f"{alertmanager}: {str(exc) or type(exc).__name__}"
        result = {"source": prometheus, "error": None, **build(topo, answers, alerts)}
        if alert_error:
            result["alerts_error"] = alert_error
        return result
    return {"source": None, "error": "; ".join(errors)}


def collect_ranges(topo: Topology, start: float, end: float, step: float = 15.0,
                   get: Getter | None = None, timeout: float = 5.0,
                   first: str | None = None) -> dict[str, Any]:
    """RANGE_QUERIES over [start, end] (unix times) from the first monitoring machine that
    answers: {"source", "error", "series": {name: [Series]}}; never raises for an
    unreachable one."""
    get = get or _http_get(timeout)
    errors = []
    for prometheus, _ in endpoints(topo, first):
        try:
            answers = {name: get(f"{prometheus}/api/v1/query_range",
                                 {"query": q, "start": f"{start:.3f}", "end": f"{end:.3f}",
                                  "step": f"{step:g}"})
                       for name, q in RANGE_QUERIES.items()}
        except (httpx.HTTPError, ValueError) as exc:
            errors.append(f"{prometheus}: {str(exc) or type(exc).__name__}")
            continue
        return {"source": prometheus, "error": None,
                "series": {name: series(a) for name, a in answers.items()}}
    return {"source": None, "error": "; ".join(errors) or "no machine with role monitoring",
            "series": {name: [] for name in RANGE_QUERIES}}


def merge(status: dict[str, Any], monitoring: dict[str, Any]) -> dict[str, Any]:
    """`hastack status --json` with the monitoring view added: a new top-level key
    `monitoring`, and `health`/`daemons` on each machine. Existing keys are not touched."""
    merged = dict(status)
    merged["monitoring"] = monitoring
    per_machine = monitoring.get("machines") or {}
    machines = []
    for entry in status.get("machines") or []:
        entry = dict(entry)
        seen = per_machine.get(entry.get("name"))
        entry.setdefault("health", seen["health"] if seen else "unknown")
        entry.setdefault("daemons", seen["daemons"] if seen else {})
        machines.append(entry)
    merged["machines"] = machines
    return merged


def _rate(value: float | None, unit: str = "/s") -> str:
    return "?" if value is None else f"{value:.1f}{unit}"


def summary_lines(monitoring: dict[str, Any]) -> list[str]:
    """The screen as plain lines (the CLI may colour them)."""
    if monitoring.get("error"):
        return [f"monitoring: unavailable ({monitoring['error']})"]
    lines = []
    alerts = monitoring.get("alerts") or []
    lines.append(f"alerts: {len(alerts)} firing" if alerts else "alerts: none firing")
    for a in alerts:
        where = " ".join(f"{k}={v}" for k, v in sorted(a["labels"].items())
                         if k in ("machine", "vip", "tier"))
        lines.append(f"  {a['severity'] or '-':8} {a['alertname']}  {a['summary']}  "
                     f"[{where}] since {a['since']}")
    t = monitoring.get("traffic") or {}
    ratio = t.get("error_ratio")
    p99 = t.get("p99_seconds")
    lines.append(f"traffic: {_rate(t.get('requests_per_s'), ' req/s')}, 5xx "
                 f"{_rate(t.get('errors_5xx_per_s'))}"
                 + (f" ({ratio:.2%})" if ratio is not None else "")
                 + (f", p99 {p99 * 1000:.0f} ms" if p99 is not None else ", p99 ?"))
    for vip, v in (monitoring.get("vips") or {}).items():
        def ok(flag: bool | None) -> str:
            return "?" if flag is None else ("ok" if flag else "FAIL")
        holders = "?" if v["holders"] is None else (", ".join(v["holders"]) or "NOBODY")
        cert = "?" if v["cert_days_left"] is None else f"{v['cert_days_left']:.0f} d"
        lines.append(f"VIP {vip}: held by {holders}; site {ok(v['site_probe'])}, DNS "
                     f"{ok(v['dns_answer'])}, certificate {cert}")
    for lb, backends in (monitoring.get("backends") or {}).items():
        for proxy, servers in backends.items():
            states = " ".join(f"{s} {st}" for s, st in servers.items())
            lines.append(f"{lb} {proxy}: {states}")
    for db in monitoring.get("databases") or []:
        extra = ""
        if db["role"] == "replica":
            threads = "running" if db["io_running"] and db["sql_running"] else "STOPPED"
            lag = "?" if db["lag_seconds"] is None else f"{db['lag_seconds']:.0f} s"
            extra = f" of {db['replicating_from']}, threads {threads}, lag {lag}"
        lines.append(f"{db['name']}: {db['role']}{extra}")
    for name, m in (monitoring.get("machines") or {}).items():
        detail = f" ({', '.join(m['problems'])})" if m["problems"] else ""
        lines.append(f"{name}: {m['health']}{detail}")
    return lines
