"""Per-fault numbers from the load's samples (pure: samples and moments in, dict out).

Times in the result are seconds relative to the fault's injection (negative: before it).
- requests: by kind (read, write): sent, ok, failed (no answer or 5xx; a 4xx is neither);
- error_window: scheduled time of the first failure -> end of the last failure;
- service_restored_s: end of the first success after the last failure (0 with no failure);
- p50/p99 (ms): latency of requests scheduled between injection and heal;
- write_refused_max_ms: the slowest failed write during that span (how fast writes fail);
- slowest_ok_ms: per kind, the slowest request answered during that span (how long a live
  path may legitimately take: what the proxies' replay timeouts must stay above);
- series: per second of scheduled time, requests/s, errors/s and p99 (ms) (the plots).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from hastack.loadgen import Sample


def _kind(s: Sample) -> str:
    return getattr(s.tag, "kind", None) or "other"


def _pct(values: Sequence[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


def _rel(t: float | None, t0: float) -> float | None:
    return None if t is None else round(t - t0, 3)


def by_kind(samples: Sequence[Sample]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for s in samples:
        row = out.setdefault(_kind(s), {"sent": 0, "ok": 0, "failed": 0})
        row["sent"] += 1
        row["ok"] += s.ok
        row["failed"] += s.failed
    return out


def failure_causes(samples: Sequence[Sample]) -> dict[str, dict[str, int]]:
    """Failed requests per kind by cause: the HTTP status, or how it failed without one."""
    out: dict[str, dict[str, int]] = {}
    for s in samples:
        if s.failed:
            causes = out.setdefault(_kind(s), {})
            cause = str(s.status) if s.status is not None else (s.error or "no answer")
            causes[cause] = causes.get(cause, 0) + 1
    return out


def series(samples: Sequence[Sample], t0: float, bin_s: float = 1.0) -> list[dict[str, Any]]:
    bins: dict[int, list[Sample]] = {}
    for s in samples:
        bins.setdefault(math.floor((s.scheduled - t0) / bin_s), []).append(s)
    return [{"t": round(b * bin_s, 3), "requests_per_s": len(group) / bin_s,
             "errors_per_s": sum(x.failed for x in group) / bin_s,
             "p99_ms": _ms(_pct([x.latency for x in group], 99))}
            for b, group in sorted(bins.items())]


SETTLE_S = 2.0


def fault_figures(samples: Sequence[Sample], t_inject: float, t_heal: float,
                  t_healthy: float | None) -> dict[str, Any]:
    failures = [s for s in samples if s.failed]
    during = [s for s in samples if t_inject <= s.scheduled <= t_heal]
    restored = None
    if failures:
        last = max(s.scheduled for s in failures)
        restored = min((s.end for s in samples if s.ok and s.scheduled > last), default=None)
    refused = [s.latency for s in during if _kind(s) == "write" and s.failed]
    return {
        "requests": by_kind(samples),
        "failure_causes": failure_causes(samples),
        "failed": len(failures),
        "error_window": None if not failures else [
            _rel(min(s.scheduled for s in failures), t_inject),
            _rel(max(s.end for s in failures), t_inject)],
        "service_restored_s": 0.0 if not failures else _rel(restored, t_inject),
        "healed_at_s": _rel(t_heal, t_inject),
        "healthy_after_heal_s": None if t_healthy is None else round(t_healthy - t_heal, 3),
        "p50_ms": _ms(_pct([s.latency for s in during], 50)),
        "p99_ms": _ms(_pct([s.latency for s in during], 99)),
        # once the stack had SETTLE_S to route around the fault: what a fault costs for as
        # long as it lasts (the goal for a dead replica: p99 under 50 ms within 2 s)
        "p99_settled_ms": _ms(_pct([s.latency for s in during
                                    if s.scheduled >= t_inject + SETTLE_S], 99)),
        "write_refused_max_ms": _ms(max(refused, default=None)),
        "slowest_ok_ms": {kind: _ms(max(s.latency for s in during if s.ok and _kind(s) == kind))
                          for kind in sorted({_kind(s) for s in during if s.ok})},
        "series": series(samples, t_inject),
    }


def promise_broken(expect: str, requests: dict[str, dict[str, int]]) -> str | None:
    """What the design promised and this fault broke (None if kept)."""
    failed = {k: v["failed"] for k, v in requests.items() if v["failed"]}
    if expect == "all" and failed:
        return "requests failed: " + ", ".join(f"{n} {k}" for k, n in sorted(failed.items()))
    if expect == "reads" and failed.get("read"):
        return f"reads failed: {failed['read']}"
    return None
