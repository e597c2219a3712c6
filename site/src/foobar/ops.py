"""Endpoints for machines rather than people: liveness, readiness and metrics.

/healthz never touches the database, so a database outage does not get healthy app
processes restarted. /readyz says whether this app can serve at all: true while the
primary or any replica answers, since reads fall back and the board stays readable.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from flask import Blueprint, Response, jsonify

from foobar import metrics
from foobar.context import current_site
from foobar.db.nodes import REPLICA, Node, NodeUnavailable

bp = Blueprint("ops", __name__)

PROBE_TIMEOUT = 1.0


@bp.get("/healthz")
def healthz():
    return Response("ok\n", mimetype="text/plain")


def _probe(node: Node) -> dict:
    report: dict = {"node": node.name, "role": node.role}
    try:
        report.update(ok=True, seconds=round(node.probe(PROBE_TIMEOUT), 4), error=None)
    except NodeUnavailable as exc:
        report.update(ok=False, seconds=None, error=str(exc.cause))
    return report


@bp.get("/readyz")
def readyz():
    site = current_site()
    router = site.router
    nodes = router.nodes
    with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
        reports = list(pool.map(_probe, nodes))
    known = router.health.snapshot()
    for report, node in zip(reports, nodes, strict=True):
        if node.role == REPLICA and node.name in known:
            report["replication"] = known[node.name].as_dict()
    ready = any(r["ok"] for r in reports)
    response = jsonify({"ready": ready, "machine": site.config.machine, "nodes": reports})
    response.status_code = 200 if ready else 503
    response.headers["Cache-Control"] = "no-store"
    return response


@bp.get("/metrics")
def metrics_page():
    body, content_type = metrics.render()
    return Response(body, content_type=content_type)
