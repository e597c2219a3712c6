"""The steady load of a chaos run: what an outside client of www.foobar.com does.

The domain is resolved through the site's own DNS server (the lab's ns1, or the
topology's dns machine), as a client would, and requests go round-robin over the A records
it returns (both VIPs). One request in catalog.WRITE_EVERY is a write (POST /messages, JSON)
carrying its own Idempotency-Key; the others read (GET /api/messages?limit=20, a dynamic
page that queries the database). A write's body names its key, so the audit can count it on
every DB node by key and by body. New TLS connection per request (no keep-alive): every
request is routed afresh, so a dead path shows as failures and not as a stuck connection.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import httpx

from hastack.chaos.catalog import WRITE_EVERY
from hastack.errors import HastackError
from hastack.loadgen import Planned

READ_PATH = "/api/messages?limit=20"
WRITE_PATH = "/messages"
AUTHOR = "chaos"
TIMEOUT = 2.0  # a client's patience per request (from its scheduled time)


def resolve(domain: str, server: str, timeout: float = 2.0) -> list[str]:
    """The A records of `domain` at DNS `server` (sorted), or one clear error."""
    try:
        reply = dns.query.udp(dns.message.make_query(domain, "A"), server, timeout=timeout)
    except (OSError, dns.exception.DNSException) as exc:
        raise HastackError(f"DNS server {server} did not answer for {domain}: "
                           f"{str(exc) or type(exc).__name__}") from None
    found = sorted(r.address for rrset in reply.answer for r in rrset
                   if rrset.rdtype == dns.rdatatype.A)
    if not found:
        raise HastackError(f"DNS server {server} has no A record for {domain}")
    return found


def body_of(key: str) -> str:
    return f"chaos {key}"


@dataclass(frozen=True)
class Tag:
    kind: str  # read | write
    vip: str
    key: str | None = None  # writes only


class MixedLoad:
    """Plans of mixed requests, one per fault (its keys say which), over `addresses`."""

    def __init__(self, addresses: list[str], run_id: str | None = None):
        if not addresses:
            raise HastackError("no address to send the load to")
        self.addresses = addresses
        self.run_id = run_id or secrets.token_hex(4)

    def key(self, phase: int, i: int) -> str:
        return f"chaos-{self.run_id}-{phase}-{i}"

    def plan(self, phase: int) -> Callable[[int], Planned]:
        def planned(i: int) -> Planned:
            vip = self.addresses[i % len(self.addresses)]
            if i % WRITE_EVERY == WRITE_EVERY - 1:
                key = self.key(phase, i)
                return Planned("POST", f"https://{vip}{WRITE_PATH}",
                               {"author": AUTHOR, "body": body_of(key)},
                               {"Idempotency-Key": key}, Tag("write", vip, key))
            return Planned("GET", f"https://{vip}{READ_PATH}", tag=Tag("read", vip))
        return planned


def inspect(response: httpx.Response) -> dict[str, Any]:
    """What a sample keeps of its response: who answered (LB, web/app, DB node) and, for an
    acknowledged write, the id the site gave it and whether it was a replay."""
    note: dict[str, Any] = {"lb": response.headers.get("x-lb"),
                            "served_by": response.headers.get("x-served-by"),
                            "db": response.headers.get("x-db")}
    if response.request.method == "POST" and response.status_code == 201:
        try:
            note["id"] = int(response.json()["id"])
        except (ValueError, KeyError, TypeError):
            note["id"] = None  # acknowledged without an id: the audit counts it as lost
        note["replayed"] = response.headers.get("idempotent-replayed") == "true"
    return note
