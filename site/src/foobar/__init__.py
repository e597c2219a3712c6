"""foobar board: the www.foobar.com message board.

Kept import-free on purpose: foobar.gunicorn_conf must set PROMETHEUS_MULTIPROC_DIR before
anything imports prometheus_client.
"""

__version__ = "0.1.0"
