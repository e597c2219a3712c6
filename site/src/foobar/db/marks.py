"""Dead-node marks shared by the processes of one app server.

Each gunicorn worker keeps its own health cache (foobar.db.health): a worker that finds a
node silent marks it down for its own requests at once, but its siblings each found out
for themselves, one request's timeout each. When the primary dies, the proxies' retries of
a refused write may meet several such workers in a row, and each costs the write another
timeout before it is refused. With a board, the first worker to find a node silent posts
when it did; the others read the board as they look at their cache (a stat per node), mark
the node down too and wake their own checker, which clears the mark within milliseconds if
the node answers after all.

A mark is a file per node in a directory on tmpfs (the service's RuntimeDirectory) whose
content is the moment (CLOCK_MONOTONIC, one clock for every process of the machine) the
node was found silent; posting replaces it atomically.
"""

from __future__ import annotations

import contextlib
import os
import threading
from pathlib import Path


class DownBoard:
    def __init__(self, directory: str | os.PathLike[str]):
        self.directory = Path(directory)
        self._seen: dict[str, tuple[int, float | None]] = {}  # name -> (mtime_ns, moment)
        self._lock = threading.Lock()

    def _path(self, name: str) -> Path:
        return self.directory / name.replace("/", "_")

    def post(self, name: str, moment: float) -> None:
        """Say that `name` was found silent at `moment` (best effort: a board that cannot
        be written only costs the siblings their own discovery)."""
        path = self._path(name)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
        with contextlib.suppress(OSError):
            self.directory.mkdir(parents=True, exist_ok=True)
            tmp.write_text(repr(moment))
            os.replace(tmp, path)

    def marked_at(self, name: str) -> float | None:
        """When `name` was last posted silent, by any process; None if never."""
        path = self._path(name)
        try:
            mtime = path.stat().st_mtime_ns
        except OSError:
            return None
        with self._lock:
            seen = self._seen.get(name)
            if seen is not None and seen[0] == mtime:
                return seen[1]
        try:
            moment: float | None = float(path.read_text())
        except (OSError, ValueError):
            moment = None
        with self._lock:
            self._seen[name] = (mtime, moment)
        return moment
