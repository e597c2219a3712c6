"""Bounded, open-loop HTTP load for benchmarks and chaos tests.

Requests go out on a fixed timetable (request i at start + i/rate) whatever became of the
earlier ones. A closed loop ("send the next when the last returned") slows down when a
backend stalls and so hides the stall; here a stall shows up as failures and latency.
Every request keeps its own timeline (scheduled, start, end, outcome, which backend
answered), which is what outage windows and "first success after the fault" are measured
from. A run is bounded by duration, max_requests and a stop event, whichever comes first,
and always ends by itself, at most ``timeout`` after the last scheduled request.

    python -m hastack.loadgen https://198.18.0.100/ --host www.foobar.com --rate 200 \
        --cacert /var/lib/hastack/lab/secrets/ca/ca.crt
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx

from hastack import siteclient

ERROR_KINDS = ("timeout", "connect", "reset", "other")
_POLL = 0.05  # longest sleep between two looks at stop_event
MEASURE_NICE = -10  # the generator's thread priority (measure_first)


@dataclass(frozen=True, slots=True)
class Sample:
    """One request. Times are time.monotonic() seconds."""

    scheduled: float  # its slot in the timetable
    start: float  # handed to the HTTP client (== end if it never got a concurrency slot)
    end: float
    status: int | None = None  # HTTP status, None when there was no response
    error: str | None = None  # one of ERROR_KINDS when there was no response
    header: str | None = None  # the recorded response header, if present
    tag: Any = None  # the planned request's tag (see Planned), None without a plan
    note: Any = None  # what `inspect` made of the response (e.g. the id a write got)

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 400

    @property
    def failed(self) -> bool:
        return self.error is not None or (self.status is not None and self.status >= 500)

    @property
    def latency(self) -> float:
        """From the scheduled time, so a request delayed on the client side is not flattered."""
        return self.end - self.scheduled


@dataclass
class LoadResult:
    """All samples of a run, in timetable order. 4xx are neither ok nor failed."""

    samples: list[Sample] = field(default_factory=list)

    @property
    def sent(self) -> int:
        return len(self.samples)

    @property
    def ok(self) -> int:
        return sum(s.ok for s in self.samples)

    @property
    def failed(self) -> int:
        return sum(s.failed for s in self.samples)

    @property
    def failure_rate(self) -> float:
        return self.failed / self.sent if self.sent else 0.0

    def latency_percentile(self, p: float) -> float:
        """Nearest-rank percentile (p in 0..100) of latency in seconds; failures included."""
        if not 0 <= p <= 100:
            raise ValueError(f"percentile must be within 0..100, not {p}")
        values = sorted(s.latency for s in self.samples)
        if not values:
            return 0.0
        return values[max(1, math.ceil(p / 100 * len(values))) - 1]

    @property
    def throughput(self) -> float:
        """Successful responses per second over the run (first scheduled to last end)."""
        if not self.samples:
            return 0.0
        span = max(s.end for s in self.samples) - min(s.scheduled for s in self.samples)
        return self.ok / span if span > 0 else 0.0

    def outages(self) -> list[tuple[float, float]]:
        """Windows of consecutive failures: from the scheduled time of the first failure to
        the end of the first success after it (or the last failure's end if none came)."""
        windows: list[tuple[float, float]] = []
        start: float | None = None
        last_end = 0.0
        for s in self.samples:
            if s.failed:
                if start is None:
                    start, last_end = s.scheduled, s.end
                last_end = max(last_end, s.end)
            elif s.ok and start is not None:
                windows.append((start, s.end))
                start = None
        if start is not None:
            windows.append((start, last_end))
        return windows

    @property
    def longest_outage(self) -> float:
        return max((end - start for start, end in self.outages()), default=0.0)

    def first_success_after(
        self, t: float, header_value_predicate: Callable[[str | None], bool] | None = None
    ) -> float | None:
        """End time of the earliest successful response that started at or after t
        (and whose recorded header satisfies the predicate, if given); None if none."""
        return min(
            (
                s.end
                for s in self.samples
                if s.ok
                and s.start >= t
                and (header_value_predicate is None or header_value_predicate(s.header))
            ),
            default=None,
        )

    def served_by(self) -> Counter[str | None]:
        """Recorded header values among successes (None: the header was missing)."""
        return Counter(s.header for s in self.samples if s.ok)

    def summary(self) -> dict[str, int | float]:
        return {
            "sent": self.sent,
            "ok": self.ok,
            "failed": self.failed,
            "p50_ms": round(self.latency_percentile(50) * 1000, 1),
            "p99_ms": round(self.latency_percentile(99) * 1000, 1),
            "longest_outage_ms": round(self.longest_outage * 1000, 1),
            "throughput": round(self.throughput, 1),
        }


@dataclass(frozen=True, slots=True)
class Planned:
    """One request of a mixed load: what to send, and a tag its Sample keeps (e.g. read or
    write, the VIP, the idempotency key)."""

    method: str
    url: str
    json: dict[str, Any] | None = None
    headers: dict[str, str] | None = None
    tag: Any = None


def run_load(
    url: str,
    *,
    host_header: str | None = None,
    rate: float = 200.0,
    duration: float = 10.0,
    max_requests: int | None = None,
    timeout: float = 1.0,
    concurrency: int = 64,
    method: str = "GET",
    json_body: dict[str, Any] | None = None,
    stop_event: threading.Event | None = None,
    keepalive: bool = False,
    record_header: str = "x-served-by",
    on_sample: Callable[[Sample], None] | None = None,
    ca_file: str | None = None,
    idempotency_keys: bool = False,
    plan: Callable[[int], Planned] | None = None,
    inspect: Callable[[httpx.Response], Any] | None = None,
) -> LoadResult:
    """Send requests to url at `rate` per second until duration, max_requests or stop_event.

    Each request has `timeout` seconds from its scheduled time, including any wait for one
    of `concurrency` slots. Without keepalive every request opens a new connection, so each
    one is routed afresh. Blocks (runs its own event loop): call it from a thread to inject
    faults meanwhile. `on_sample` sees each sample as it completes (progress while it runs).
    With idempotency_keys, every request carries its own Idempotency-Key (what a careful
    client does for writes: a replay anywhere on the path is then answered, never applied
    twice). An https url is verified against `ca_file` (else the system's CAs) for the name in
    `host_header`, which also goes in SNI: the url may name a VIP's address.
    With `plan`, request i is plan(i) instead (url, method, body and headers of its own: a
    mixed load over several addresses); `url` then only checks the scheme. `inspect` sees
    each response and returns the Sample's `note`.
    """
    if not (rate > 0 and math.isfinite(rate)):
        raise ValueError(f"rate must be a positive number, not {rate}")
    if not (duration >= 0 and math.isfinite(duration)):
        raise ValueError(f"duration must be a finite number >= 0, not {duration}")
    if not (timeout > 0 and math.isfinite(timeout)):
        raise ValueError(f"timeout must be a positive number, not {timeout}")
    if max_requests is not None and max_requests < 0:
        raise ValueError(f"max_requests must be >= 0, not {max_requests}")
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, not {concurrency}")
    try:
        target = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise ValueError(f"bad url {url!r}: {exc}") from None
    if target.scheme not in ("http", "https") or not target.host:
        raise ValueError(f"url must be http(s)://host..., not {url!r}")
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency if keepalive else 0
    )
    headers = {"Host": host_header} if host_header else None
    sni = siteclient.extensions(host_header) if host_header and target.scheme == "https" else None

    def planned(i: int) -> Planned:
        if plan is not None:
            return plan(i)
        key = {"Idempotency-Key": uuid.uuid4().hex} if idempotency_keys else None
        return Planned(method, url, json_body, key)

    tls = siteclient.tls_context(ca_file)

    def new_client() -> httpx.AsyncClient:
        return httpx.AsyncClient(limits=limits, timeout=timeout, headers=headers,
                                 trust_env=False, verify=tls)  # no env proxies

    async def send(shared: httpx.AsyncClient | None, request: Planned) -> httpx.Response:
        url = request.url if plan is not None else target
        if shared is not None:
            return await shared.request(request.method, url, json=request.json,
                                        extensions=sni, headers=request.headers)
        # Without keep-alive each request gets a client (a connection pool) of its own:
        # httpcore's shared pool leaks a connection slot when a request is cancelled at the
        # wrong moment (encode/httpcore#1093, 1.0.9), and once every slot is leaked each later
        # request times out against a healthy server (seen: 2728 of 4449 "failed" in a deploy
        # while curl beside it got 700 of 700). A private pool dies with its request.
        async with new_client() as client:
            return await client.request(request.method, url, json=request.json,
                                        extensions=sni, headers=request.headers)

    async def one(shared: httpx.AsyncClient | None, slots: asyncio.Semaphore,
                  scheduled: float, request: Planned) -> Sample:
        start: float | None = None
        status: int | None = None
        error: str | None = None
        value: str | None = None
        note: Any = None
        try:
            async with asyncio.timeout(max(0.0, scheduled + timeout - time.monotonic())):
                async with slots:
                    start = time.monotonic()
                    response = await send(shared, request)
            status, value = response.status_code, response.headers.get(record_header)
            if inspect is not None:
                note = inspect(response)
        except Exception as exc:
            error = _error_kind(exc)
        end = time.monotonic()
        sample = Sample(scheduled, end if start is None else start, end, status, error, value,
                        request.tag, note)
        if on_sample is not None:
            on_sample(sample)
        return sample

    async def load() -> LoadResult:
        slots = asyncio.Semaphore(concurrency)
        tasks: list[asyncio.Task[Sample]] = []
        async with contextlib.AsyncExitStack() as stack:
            shared = await stack.enter_async_context(new_client()) if keepalive else None
            await anyio.sleep(0)  # loads httpx's async backend now, not during the first request
            t0 = time.monotonic()
            while max_requests is None or len(tasks) < max_requests:
                offset = len(tasks) / rate
                if offset >= duration or not await _sleep_until(t0 + offset, stop_event):
                    break
                tasks.append(asyncio.create_task(
                    one(shared, slots, t0 + offset, planned(len(tasks)))))
            samples = await asyncio.gather(*tasks)
        return LoadResult(list(samples))

    return asyncio.run(load())


async def _sleep_until(when: float, stop_event: threading.Event | None) -> bool:
    """Sleep until monotonic time `when`; False as soon as stop_event is set."""
    while stop_event is None or not stop_event.is_set():
        left = when - time.monotonic()
        if left <= 0:
            return True
        await asyncio.sleep(min(left, _POLL))
    return False


def measure_first() -> None:
    """Give the calling thread a higher CPU priority (nice -10), where that is allowed.

    The generator measures the stack; on a machine it shares with a lab (2 cores, a deploy
    installing a release) an open-loop client starved of CPU falls behind its timetable and
    its requests time out in TLS handshakes while the stack answers (seen: 2728 of 4449
    "failed" while curl beside it got 700 of 700).
    """
    with contextlib.suppress(OSError):  # not root: measured at the priority it has
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), MEASURE_NICE)


def _error_kind(exc: Exception) -> str:
    if isinstance(exc, TimeoutError | httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.ConnectError):
        return "connect"
    if isinstance(exc, httpx.ReadError | httpx.WriteError | httpx.RemoteProtocolError):
        return "reset"  # dropped mid-request, or closed without answering
    return "other"


class BackgroundLoad:
    """run_load in a thread for the length of a `with` block, with samples visible as they
    complete: the shape of every fault experiment (start load, inject, watch, stop)."""

    def __init__(self, url: str, **options: Any):
        self.live: list[Sample] = []
        self.result: LoadResult | None = None
        self._stop = threading.Event()
        options.setdefault("duration", 300.0)  # the block ends it; this only bounds it
        self._thread = threading.Thread(target=self._run, args=(url, options), daemon=True)

    def _run(self, url: str, options: dict[str, Any]) -> None:
        measure_first()
        self.result = run_load(url, stop_event=self._stop, on_sample=self.live.append,
                               **options)

    def wait_for(self, count: int, timeout: float) -> bool:
        """Wait until `count` requests completed in all; False if that took too long."""
        deadline = time.monotonic() + timeout
        while len(self.live) < count:
            if time.monotonic() > deadline or not self._thread.is_alive():
                return False
            time.sleep(0.02)
        return True

    def __enter__(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hastack.loadgen",
        description="Open-loop HTTP load; prints a JSON summary (Ctrl-C stops early).",
    )
    parser.add_argument("url")
    parser.add_argument("--host", help="Host header to send")
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds")
    parser.add_argument("--max-requests", type=int)
    parser.add_argument("--timeout", type=float, default=1.0, help="seconds per request")
    parser.add_argument("--keepalive", action="store_true", help="reuse connections")
    parser.add_argument("--cacert", help="CA file that verifies an https url (hastack status)")
    args = parser.parse_args(argv)
    stop = threading.Event()
    with ThreadPoolExecutor(1, initializer=measure_first) as pool:
        future = pool.submit(
            run_load, args.url, host_header=args.host, rate=args.rate,
            duration=args.duration, max_requests=args.max_requests, timeout=args.timeout,
            keepalive=args.keepalive, stop_event=stop, ca_file=args.cacert,
        )
        try:
            try:
                result = future.result()
            except KeyboardInterrupt:
                stop.set()
                result = future.result()
        except ValueError as exc:
            parser.error(str(exc))
    print(json.dumps(result.summary(), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
