"""Endpoints for machines rather than people: liveness, readiness and metrics.

/healthz never touches the database, so a database outage does not get healthy app
processes restarted. It answers `ok` (plain text, as HAProxy and the deploy expect) with
the running code's version in `X-Version` (or, to a client asking for JSON,
{"status", "version", "machine"}), so a rolling deploy can wait for the new code. /readyz says whether this app can serve at all: true while any
database node answers, since reads fall back and the board stays readable. Per node it
shows the role the server reports right now (from its @@read_only), the role configured
for it (only a hint), and how the router currently uses it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from flask import Blueprint, Response, jsonify, request

from foobar import metrics
from foobar.context import current_site
from foobar.db.nodes import PRIMARY, REPLICA, Node, NodeUnavailable

bp = Blueprint("ops", __name__)

PROBE_TIMEOUT = 1.0


@bp.get("/healthz")
def healthz():
    site = current_site()
    accept = request.accept_mimetypes
    if accept.best_match(["text/plain", "application/json"]) == "application/json":
        response = jsonify(status="ok", version=site.version, machine=site.config.machine)
    else:
        response = Response("ok\n", mimetype="text/plain")
    response.headers["X-Version"] = site.version
    response.headers["Cache-Control"] = "no-store"
    return response


def _probe(node: Node) -> dict:
    report: dict = {"node": node.name}
    try:
        seconds, read_only = node.probe(PROBE_TIMEOUT)
    except NodeUnavailable as exc:
        report.update(role=None, read_only=None, ok=False, seconds=None, error=str(exc.cause))
    else:
        role = REPLICA if read_only else PRIMARY
        report.update(role=role, read_only=read_only, ok=True, seconds=round(seconds, 4))
        report["error"] = None
    return report


@bp.get("/readyz")
def readyz():
    site = current_site()
    router = site.router
    nodes = router.nodes
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        reports = list(pool.map(_probe, nodes))
    view = router.view()  # the router's picture (at most ~1 s old), not this probe's
    for report, node in zip(reports, nodes, strict=True):
        report["configured_role"] = PRIMARY if node is router.configured_primary else REPLICA
        if node is view.primary:
            report["routed_as"] = PRIMARY
        elif node in view.replicas:
            report["routed_as"] = REPLICA
        else:
            report["routed_as"] = None
        status = view.status(node)
        report["gtid_binlog_pos"] = status.gtid_binlog_pos
        if status.replication is not None:
            report["replication"] = status.replication.as_dict()
    ready = any(r["ok"] for r in reports)
    body = {
        "ready": ready,
        "machine": site.config.machine,
        "primary": view.primary.name if view.primary else None,
        "nodes": reports,
    }
    response = jsonify(body)
    response.status_code = 200 if ready else 503
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/metrics")
def metrics_page():
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)
