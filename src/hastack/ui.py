"""Progress output that reads well both on a terminal (spinners) and in a log (lines)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console


class _Lines:
    """Stand-in for rich's Status when output is not a terminal: one line per update."""

    def __init__(self, console: Console, message: str):
        self.console = console
        self.started = time.monotonic()
        self.update(message)

    def update(self, message: str) -> None:
        self.console.print(f"[{time.monotonic() - self.started:6.1f}s] {message}",
                           highlight=False)


@contextmanager
def status(console: Console, message: str) -> Iterator[object]:
    if console.is_terminal:
        with console.status(message) as s:
            yield s
    else:
        yield _Lines(console, message)
