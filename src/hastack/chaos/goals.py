"""The chaos suite's goals (issue 9's "what it must show"), judged from a run's own figures.

Pure: the report's data in, one row per goal out, each with what was measured and whether
it was met, so the report says so itself instead of leaving the reader to compare columns.
A goal with no fault of its kind in the run is left out (a CI-sized run has fewer faults).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

REFUSED_WITHIN_MS = 1000.0  # a write refused after the primary died: answered within 1 s
SETTLED_P99_MS = 50.0       # a replica's death: p99 under this from 2 s after it
DEATHS = ("power-off", "link-cut")  # what counts as a node's death


def _suffix(r: dict[str, Any]) -> str:
    return r["fault"].split("-", 1)[1] if "-" in r["fault"] else r["fault"]


def _faults(data: dict[str, Any], keep: Callable[[dict[str, Any]], bool]) -> list[dict]:
    return [r for r in data["faults"] if keep(r)]


def _row(goal: str, met: bool, measured: str) -> dict[str, Any]:
    return {"goal": goal, "met": met, "measured": measured}


def judge(data: dict[str, Any]) -> list[dict[str, Any]]:
    audit = data["audit"]
    rows = [_row("no acknowledged write lost, none applied twice",
                 audit["lost"] == 0 and audit["duplicated"] == 0,
                 f"{audit['acknowledged']} acknowledged: {audit['lost']} lost, "
                 f"{audit['duplicated']} applied twice")]
    db = _faults(data, lambda r: r.get("db_role") is not None)
    if db:
        failed = {r["fault"]: r["requests"].get("read", {}).get("failed", 0) for r in db}
        rows.append(_row("no failed read in any database fault", not any(failed.values()),
                         ", ".join(f"{k} {v}" for k, v in failed.items())))
    primary = _faults(data, lambda r: r.get("db_role") == "primary")
    if primary:
        slowest = {r["fault"]: r["write_refused_max_ms"] for r in primary}
        rows.append(_row(
            f"writes refused within {REFUSED_WITHIN_MS / 1000:g} s once the primary died",
            all(v is None or v <= REFUSED_WITHIN_MS for v in slowest.values()),
            ", ".join(f"{k}: " + ("none refused" if v is None else f"slowest refusal {v:g} ms")
                      for k, v in slowest.items())))
    replica = _faults(data, lambda r: r.get("db_role") == "replica" and _suffix(r) in DEATHS)
    if replica:
        p99 = {r["fault"]: r["p99_settled_ms"] for r in replica}
        rows.append(_row(
            f"a replica's death: p99 under {SETTLED_P99_MS:g} ms from 2 s after it",
            all(v is not None and v < SETTLED_P99_MS for v in p99.values()),
            ", ".join(f"{k} {v:g} ms" for k, v in p99.items())))
    lbs = _faults(data, lambda r: r.get("in_flight_at_fault") is not None)
    if lbs:
        dying = {r["fault"]: failed_before_heal(r) for r in lbs}
        later = ", ".join(f"{r['fault']} {r['failed'] - dying[r['fault']]}"
                          for r in lbs if r["failed"] > dying[r["fault"]])
        rows.append(_row(
            "an LB fault fails at most the requests in flight through that LB when it dies",
            all(dying[r["fault"]] <= r["in_flight_at_fault"] for r in lbs),
            ", ".join(f"{r['fault']} {dying[r['fault']]} of {r['in_flight_at_fault']}"
                      for r in lbs)
            + (f"; after the heal, as the VIP went back to its master: {later}"
               if later else "")))
    return rows


def failed_before_heal(r: dict[str, Any]) -> int:
    """Failures of requests sent before the heal (the per-second series: a request's second
    is that of its sending; one sent just before the fault and in flight at it counts too),
    as opposed to the heal's own (a VIP going back to its recovered master resets what was in
    flight through the other LB then)."""
    return round(sum(p["errors_per_s"] for p in r.get("series", [])
                     if p["t"] < r["healed_at_s"]))
