"""The database primary fails under acknowledged writes: what the cluster makes of it.

One experiment: steady writes through the site, each acknowledged by its id; a fault on the
primary of the moment; then which node the cluster promoted and when, how long no write was
acknowledged, whether every acknowledged write is on every node (and the tables are equal,
CHECKSUM TABLE), and when the old primary replicates from the new one again. The e2e tests
assert on the outcome, bench/db_failover.py prints its figures.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from hastack import db
from hastack.chaos import primitives
from hastack.errors import HastackError
from hastack.fleet import Fleet
from hastack.loadgen import BackgroundLoad

FAULTS = ("mariadbd-killed", "mariadbd-hung", "power-off", "link-cut")
TABLE = "foobar.messages"


@dataclass
class Outcome:
    fault: str
    old_primary: str
    new_primary: str = ""
    promoted_s: float | None = None  # fault -> a replica writable (polled every ~0.1 s)
    write_outage_s: float | None = None  # longest time without an acknowledged write
    acked: list[int] = field(default_factory=list)
    refused: int = 0  # writes answered with an error or not at all (none is lost by that)
    missing: dict[str, list[int]] = field(default_factory=dict)  # acknowledged, not there
    checksums: dict[str, str] = field(default_factory=dict)
    rejoined_s: float | None = None  # fault -> the old primary replicates from the new one
    split_brain: list[str] = field(default_factory=list)  # writable nodes besides the new one
    # automatic promotion off: nodes found writable before the operator's failover
    promoted_unasked: list[str] = field(default_factory=list)
    fault_wall: float = 0.0  # time.time() of the fault (to read the nodes' logs against)

    def summary(self) -> dict[str, Any]:
        return {"fault": self.fault, "old_primary": self.old_primary,
                "new_primary": self.new_primary, "promoted_s": _round(self.promoted_s),
                "write_outage_s": _round(self.write_outage_s),
                "acknowledged_writes": len(self.acked), "refused_writes": self.refused,
                "acknowledged_lost": sum(len(v) for v in self.missing.values()),
                "tables_equal": len(set(self.checksums.values())) == 1,
                "rejoined_s": _round(self.rejoined_s), "split_brain_nodes": self.split_brain}


def read_only(fleet: Fleet, node: str) -> bool | None:
    """The node's @@read_only, None if it does not answer (down, cut off, stopped)."""
    try:
        out = fleet.run_on(node, "mariadb -B -N -e 'SELECT @@read_only'", timeout=3)
    except Exception:  # noqa: BLE001 - an unreachable node is the expected case here
        return None
    return out.stdout.strip() == "1" if out.returncode == 0 else None


def primary_now(fleet: Fleet, nodes: list[str]) -> list[str]:
    answers = dict(zip(nodes, fleet.on_each(nodes, lambda n: read_only(fleet, n)), strict=True))
    return [n for n, ro in answers.items() if ro is False]


def inject(fleet: Fleet, fault: str, node: str) -> float:
    if fault == "mariadbd-killed":
        return primitives.crash_mariadbd(fleet, node)
    if fault == "mariadbd-hung":
        return primitives.hang_mariadbd(fleet, node)
    if not fleet.physical_faults:
        raise HastackError(f"'{fault}' needs the lab's hands (power, cables)")
    if fault == "power-off":
        return primitives.power_off(fleet, node)  # type: ignore[arg-type]
    if fault == "link-cut":
        return primitives.cut_link(node, "private")
    raise HastackError(f"unknown fault '{fault}'; known: {', '.join(FAULTS)}")


def heal(fleet: Fleet, fault: str, node: str) -> None:
    """Undo what the cluster does not: a cut cable, a stopped process it did not kill. A
    killed mariadbd is restarted by the cluster, a powered-off node is powered on by its
    fencing (reboot)."""
    if fault == "link-cut":
        primitives.restore_link(node, "private")
    if fault == "mariadbd-hung":
        primitives.unhang_mariadbd(fleet, node)


def run(fleet: Fleet, fault: str, rate: float = 20, before: int = 40, after: int = 60,
        promote_timeout: float = 60, rejoin_timeout: float = 240,
        log: Callable[[str], None] = lambda _: None,
        operator: Callable[[], object] | None = None, hold: float = 15) -> Outcome:
    """With `operator` (automatic promotion off), no node may be promoted for `hold` seconds
    after the fault; then operator() fails over and the experiment goes on as usual."""
    topo = fleet.require_topology()
    nodes = db.db_nodes(topo)
    writable = primary_now(fleet, nodes)
    if len(writable) != 1:
        raise HastackError(f"expected one writable primary before the fault, found "
                           f"{', '.join(writable) or 'none'}")
    old = writable[0]
    others = [n for n in nodes if n != old]
    outcome = Outcome(fault, old)
    with BackgroundLoad(f"https://{topo.vips[0].address}/messages", host_header=topo.domain,
                        rate=rate, timeout=15.0, method="POST", idempotency_keys=True,
                        json_body={"author": "failover", "body": fault},
                        record_header="location", ca_file=str(fleet.ca_cert())) as bg:
        if not bg.wait_for(before, 30):
            raise HastackError("writes through the site did not start")
        log(f"{len(bg.live)} writes sent; {fault} on {old}")
        at = inject(fleet, fault, old)
        outcome.fault_wall = time.time() - (time.monotonic() - at)
        try:
            if operator is not None:
                until = time.monotonic() + hold
                while time.monotonic() < until and not outcome.promoted_unasked:
                    outcome.promoted_unasked = primary_now(fleet, others)
                    time.sleep(0.2)
                log(f"{hold:.0f} s without the operator: promoted "
                    f"{', '.join(outcome.promoted_unasked) or 'none'}; failing over")
                operator()
            deadline = time.monotonic() + promote_timeout
            while time.monotonic() < deadline:
                promoted = primary_now(fleet, others)
                if promoted:
                    outcome.new_primary = promoted[0]
                    outcome.promoted_s = time.monotonic() - at
                    break
                time.sleep(0.1)
            log(f"promoted: {outcome.new_primary or 'none'} after {outcome.promoted_s} s")
            bg.wait_for(len(bg.live) + after, 30 + after / rate)
        finally:
            heal(fleet, fault, old)
    result = bg.result
    assert result is not None
    acks = sorted((s.end, int(s.header.rsplit("/", 1)[1])) for s in result.samples
                  if s.status == 201 and s.header)
    outcome.acked = [i for _, i in acks]
    outcome.refused = sum(1 for s in result.samples if s.status != 201)
    # from the last acknowledgement before the fault, the longest wait for the next one
    before = [t for t, _ in acks if t <= at]
    ends = before[-1:] + [t for t, _ in acks if t > at]
    gaps = [b - a for a, b in itertools.pairwise(ends)]
    outcome.write_outage_s = max(gaps) if before and gaps else None
    if not outcome.new_primary:
        return outcome
    _wait_rejoined(fleet, topo, outcome, at, rejoin_timeout, log)
    _compare(fleet, nodes, outcome)
    return outcome


def _wait_rejoined(fleet: Fleet, topo: Any, outcome: Outcome, at: float, timeout: float,
                   log: Callable[[str], None]) -> None:
    new_address = str(topo.machine(outcome.new_primary).private_address)
    deadline = at + timeout
    while time.monotonic() < deadline:
        st = db.node_status(fleet, topo, outcome.old_primary)
        if (st.role == "replica" and st.replicating_from == new_address
                and st.io_running == "Yes" and st.sql_running == "Yes"):
            outcome.rejoined_s = time.monotonic() - at
            log(f"{outcome.old_primary} replicates from {outcome.new_primary} after "
                f"{outcome.rejoined_s:.1f} s")
            return
        time.sleep(1)
    log(f"{outcome.old_primary} did not rejoin as a replica within {timeout:.0f} s")


def _compare(fleet: Fleet, nodes: list[str], outcome: Outcome) -> None:
    """Every node at the new primary's position, then the acknowledged ids and the table."""
    new = outcome.new_primary
    gtid = fleet.run_checked(new, "mariadb -B -N -e 'SELECT @@gtid_binlog_pos'",
                             "reading the primary's GTID").strip()
    ids = ",".join(map(str, outcome.acked)) or "NULL"
    for node in nodes:
        if node != new:
            state = read_only(fleet, node)  # True: a replica; False: a second writer
            if state is False:
                outcome.split_brain.append(node)
            if state is not True:
                continue
            fleet.run_on(node, f"mariadb -B -N -e \"SELECT MASTER_GTID_WAIT('{gtid}', 60)\"",
                         timeout=90)
        out = fleet.run_checked(node, "mariadb -B -N", "comparing rows", stdin=(
            f"SELECT id FROM {TABLE} WHERE id IN ({ids}); CHECKSUM TABLE {TABLE};"))
        lines = out.strip().splitlines()
        found = {int(line) for line in lines[:-1]}
        outcome.missing[node] = sorted(set(outcome.acked) - found)
        outcome.checksums[node] = lines[-1].split("\t")[-1]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)
