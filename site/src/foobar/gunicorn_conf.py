"""gunicorn settings: `gunicorn -c python:foobar.gunicorn_conf foobar.wsgi:app`.

Environment: FOOBAR_BIND (default 127.0.0.1:8000), FOOBAR_WORKERS (upper bound on the
worker count), FOOBAR_TLS_CERT + FOOBAR_TLS_KEY (serve HTTPS only, TLS 1.2 or newer) and
FOOBAR_TLS_CLIENT_CA (then every client must show a certificate that CA signed: the web tier), PROMETHEUS_MULTIPROC_DIR (a private temp dir if unset; the systemd unit
should point it at a RuntimeDirectory so it is emptied on every restart), FOOBAR_ENV_FILE
(the file the service's environment comes from; re-read on reload).

Deploys reload (SIGHUP), never restart: the master keeps its listening socket, new workers
start with the new code and environment, old ones finish their requests. A restart would
close the socket and reset connections still waiting in its backlog.
"""

import multiprocessing
import os
import ssl
import tempfile


def _metrics_dir() -> str:
    # Must be in the environment before any worker imports prometheus_client: the client
    # picks its multi-process value store at import time.
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        path = tempfile.mkdtemp(prefix="foobar-prometheus-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    os.makedirs(path, exist_ok=True)
    return path


def _workers() -> int:
    wanted = 2 * multiprocessing.cpu_count() + 1
    cap = os.environ.get("FOOBAR_WORKERS", "").strip()
    if cap:
        if not cap.isdigit() or int(cap) < 1:
            raise SystemExit(f"FOOBAR_WORKERS must be a positive integer, got {cap!r}")
        wanted = min(wanted, int(cap))
    return wanted


METRICS_DIR = _metrics_dir()

bind = [os.environ.get("FOOBAR_BIND", "127.0.0.1:8000")]
workers = _workers()
worker_class = "gthread"
# Threads per worker: a write waits in a thread for as long as no node is writable (a
# switchover: one attempt after another, foobar.db.router), and a worker whose threads all
# wait does not even finish new TLS handshakes; nginx and HAProxy's checks then count the
# app server failed. Writes/s x the switchover must fit: 10 writes/s through switchovers of
# 4-6 s without a primary took all of 6 x 5 workers x 2 app servers (test_42's rolling
# restart failed reads and writes); 16 leave room. Each thread keeps one connection per DB
# node it used: 160 app threads stay below MariaDB's max_connections (300).
threads = 16
timeout = 30
# On SIGTERM finish in-flight requests (nginx retries the rest on another app machine).
graceful_timeout = 20
keepalive = 5
accesslog = "-"
errorlog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s" xff="%({x-forwarded-for}i)s"'
proc_name = "foobar-site"

certfile = os.environ.get("FOOBAR_TLS_CERT") or None
keyfile = os.environ.get("FOOBAR_TLS_KEY") or None
if bool(certfile) != bool(keyfile):
    raise SystemExit("FOOBAR_TLS_CERT and FOOBAR_TLS_KEY must be set together")
ca_certs = os.environ.get("FOOBAR_TLS_CLIENT_CA") or None
if ca_certs:
    cert_reqs = ssl.CERT_REQUIRED


_ssl_contexts = {}


def ssl_context(config, default_ssl_context_factory):
    """gunicorn's own context (files, client verification) with TLS 1.2 as the floor, made
    once per worker process.

    gunicorn calls this for every connection; its default builds a new context each time
    (reading the CA, certificate and key files again, and with no session cache, so no
    client can resume): that capped an app server at ~80 new TLS connections a second here.
    New workers (a reload) build their own, so renewed certificates are picked up.
    """
    pid = os.getpid()
    context = _ssl_contexts.get(pid)
    if context is None:
        context = default_ssl_context_factory()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        _ssl_contexts.clear()
        _ssl_contexts[pid] = context
    return context


def on_starting(server):
    """Samples left by a previous run would otherwise be added to this run's totals."""
    for name in os.listdir(METRICS_DIR):
        if name.endswith(".db"):
            os.remove(os.path.join(METRICS_DIR, name))


def read_env_file(path: str) -> dict[str, str]:
    """KEY=value lines as systemd's EnvironmentFile= reads them (comments, blanks skipped)."""
    values = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if line and not line.startswith("#") and "=" in line:
                key, _, value = line.partition("=")
                values[key.strip()] = value.strip().strip('"')
    return values


def _env_file_keys() -> set[str]:
    path = os.environ.get("FOOBAR_ENV_FILE")
    return set(read_env_file(path)) if path and os.path.exists(path) else set()


# The variables the file gave the master (systemd read it at start), so a reload can also
# drop what the deploy removed from it.
_from_file = _env_file_keys()


def on_reload(server):
    """New workers get the environment the deploy wrote, not the one the master started with:
    changed and new variables, and none of those the file no longer has (e.g. FOOBAR_BUILD,
    once set by a release and then removed, would otherwise stay for good)."""
    global _from_file
    path = os.environ.get("FOOBAR_ENV_FILE")
    if path and os.path.exists(path):
        values = read_env_file(path)
        for key in _from_file - set(values):
            os.environ.pop(key, None)
        os.environ.update(values)
        _from_file = set(values)


def child_exit(server, worker):
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
