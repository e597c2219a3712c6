"""Prometheus metrics for requests and for where database work went.

Under gunicorn every worker is a separate process; with PROMETHEUS_MULTIPROC_DIR set
(foobar.gunicorn_conf sets it) each worker writes its samples there and /metrics adds them
all up, so a scrape sees the whole app machine, not whichever worker answered it.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from foobar.db.router import RouterEvents

# The *_created gauges double the output and no dashboard here uses them.
disable_created_metrics()

REQUESTS = Counter(
    "foobar_http_requests_total",
    "HTTP requests handled by the app.",
    ["route", "method", "status"],
)
LATENCY = Histogram(
    "foobar_http_request_duration_seconds",
    "Time to handle an HTTP request in the app.",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
DB_QUERIES = Counter(
    "foobar_db_queries_total",
    "Database units of work, by the role of the node that ran them.",
    ["role", "kind"],
)
GTID_WAITS = Counter(
    "foobar_read_your_writes_waits_total",
    "MASTER_GTID_WAIT calls made on a replica for a client's own last write.",
)
GTID_WAIT_TIMEOUTS = Counter(
    "foobar_read_your_writes_timeouts_total",
    "GTID waits that timed out, sending the read to the primary.",
)
FALLBACKS = Counter(
    "foobar_replica_fallbacks_total",
    "Reads sent to the primary although replicas are configured.",
    ["reason"],
)
PRIMARY_RETRIES = Counter(
    "foobar_db_primary_retries_total",
    "Work on the primary tried again because it was safe to (reason: read_only = refused "
    "with error 1290, unavailable = not sent / connection failed, no_primary = no node "
    "writable).",
    ["kind", "reason"],
)
MULTIPLE_WRITABLE = Counter(
    "foobar_db_multiple_writable_total",
    "Node checks that found more than one writable node (split brain), counted at most "
    "once a second while it lasts; should stay 0.",
)
STALE_READS = Counter(
    "foobar_db_stale_reads_total",
    "Reads served by a replica whose replication lost its primary, because no primary "
    "was reachable (the data is as new as any there is, but nothing can be written).",
)


class PrometheusEvents(RouterEvents):
    def query(self, role: str, kind: str) -> None:
        DB_QUERIES.labels(role, kind).inc()

    def gtid_wait(self, outcome: str) -> None:
        GTID_WAITS.inc()
        if outcome != "caught_up":
            GTID_WAIT_TIMEOUTS.inc()

    def fallback(self, reason: str) -> None:
        FALLBACKS.labels(reason).inc()

    def retry(self, kind: str, reason: str) -> None:
        PRIMARY_RETRIES.labels(kind, reason).inc()

    def multiple_writable(self, nodes) -> None:
        MULTIPLE_WRITABLE.inc()

    def stale_read(self) -> None:
        STALE_READS.inc()


def observe_request(route: str, method: str, status: int, seconds: float) -> None:
    labels = (route, method, str(status))
    REQUESTS.labels(*labels).inc()
    LATENCY.labels(*labels).observe(seconds)


def render() -> tuple[bytes, str]:
    """The exposition text: all workers' samples when running multi-process."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST
