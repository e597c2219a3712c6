"""GTID positions for read-your-writes, and the signed cookie that carries them.

After a write the app learns the primary's GTID for it and gives it to the client. Any app
machine that later serves that client can make a replica wait for that GTID before reading
(MASTER_GTID_WAIT), so a client never reads data older than its own last write. The cookie
is signed so a client cannot make replicas wait on made-up positions; a bad cookie is just
ignored.
"""

from __future__ import annotations

import re

from itsdangerous import BadData, URLSafeTimedSerializer

COOKIE_NAME = "foobar_gtid"
# Long enough to cover any lag a replica may have and still be called healthy.
COOKIE_MAX_AGE = 600
MAX_DOMAINS = 16

_GTID = re.compile(r"^(\d{1,10})-(\d{1,10})-(\d{1,20})$")


def parse_position(text: str) -> dict[int, tuple[int, int]]:
    """Parse "domain-server-seq[,...]" into {domain: (server_id, seq)}; ValueError if bad."""
    position: dict[int, tuple[int, int]] = {}
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        match = _GTID.match(part)
        if not match:
            raise ValueError(f"bad GTID {part!r}")
        domain, server, seq = (int(g) for g in match.groups())
        if domain in position:
            raise ValueError(f"domain {domain} given twice")
        position[domain] = (server, seq)
    if len(position) > MAX_DOMAINS:
        raise ValueError("too many GTID domains")
    return position


def format_position(position: dict[int, tuple[int, int]]) -> str:
    return ",".join(f"{d}-{s}-{n}" for d, (s, n) in sorted(position.items()))


def merge(*positions: str | None) -> str | None:
    """Combine positions keeping the highest sequence number per replication domain."""
    merged: dict[int, tuple[int, int]] = {}
    for text in positions:
        if not text:
            continue
        for domain, (server, seq) in parse_position(text).items():
            if domain not in merged or seq > merged[domain][1]:
                merged[domain] = (server, seq)
    return format_position(merged) if merged else None


class GtidCookie:
    """Signs and checks the foobar_gtid cookie value."""

    def __init__(self, secret_key: str, max_age: int = COOKIE_MAX_AGE):
        self._serializer = URLSafeTimedSerializer(secret_key, salt="foobar-gtid")
        self.max_age = max_age

    def dumps(self, position: str) -> str:
        return self._serializer.dumps(position)

    def loads(self, value: str | None) -> str | None:
        """The position in a cookie, or None if absent, tampered with, expired or malformed."""
        if not value:
            return None
        try:
            position = self._serializer.loads(value, max_age=self.max_age)
        except BadData:
            return None
        if not isinstance(position, str):
            return None
        try:
            return format_position(parse_position(position)) or None
        except ValueError:
            return None


def wait_for(cursor, position: str, timeout: float) -> bool:
    """Block until this replica has applied `position`; False on timeout (-1) or NULL."""
    cursor.execute("SELECT MASTER_GTID_WAIT(%s, %s) AS waited", (position, timeout))
    row = cursor.fetchone()
    return row is not None and row["waited"] == 0


def last_gtid(cursor) -> str | None:
    """The GTID of this session's last committed transaction, if binary logging gave it one."""
    cursor.execute("SELECT @@last_gtid AS gtid")
    row = cursor.fetchone()
    return (row or {}).get("gtid") or None
