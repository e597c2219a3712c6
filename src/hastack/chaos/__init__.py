"""Chaos: faults injected one at a time under a bounded load, and what clients saw.

- primitives: the faults themselves (kill a daemon, pull a plug, cut a cable), re-exported
  here so `chaos.kill_service(...)` keeps working for scripts and tests;
- catalog: the faults `hastack chaos` knows, as data (name -> inject, heal, expectation);
- load: the steady mixed load (reads and writes, both VIPs through the site's DNS);
- ledger: every write sent, what the site acknowledged, and what each DB node holds;
- health: "the whole stack is healthy" (the wait between two faults);
- detect: when the stack noticed a fault (HAProxy, VRRP, monitoring);
- run: the experiment; figures: per-fault numbers from samples; report: JSON, Markdown, PNG.
"""

from hastack.chaos.primitives import (
    cut_link,
    kill_service,
    power_off,
    power_on,
    remote_at,
    restore_link,
    start_service,
    stop_service,
)

__all__ = ["cut_link", "kill_service", "power_off", "power_on", "remote_at", "restore_link",
           "start_service", "stop_service"]
