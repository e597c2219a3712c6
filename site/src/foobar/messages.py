"""The board's SQL, all parameterised, each call routed as a read or a write.

Posting a message is idempotent: every post carries a key (the client's Idempotency-Key,
the hidden key of the HTML form, or one made up for the request), recorded in the same
transaction as the message. A second post with a key that is there already inserts
nothing and gets the first post's message back, however it got there: a client's retry,
a proxy replaying the request, or the router repeating a write whose outcome it could not
know (the connection dropped after the COMMIT was sent). Two posts with one key at the
same moment: the second one's INSERT of the key waits for the first transaction's row
lock, then finds the key (or, if the first rolled back, takes it), so there is exactly
one message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime

import pymysql

from foobar.db.nodes import NodeUnavailable
from foobar.db.router import Routed, Router, Written
from foobar.validation import NewMessage

log = logging.getLogger(__name__)

ER_DUP_ENTRY = 1062
# A key protects its request for at least this long (rows are deleted after it).
KEY_TTL_HOURS = 24

_COLUMNS = "id, author, body, created_at"


@dataclass(frozen=True)
class Message:
    id: int
    author: str
    body: str
    created_at: datetime  # UTC: connections run with time_zone = '+00:00'

    @classmethod
    def from_row(cls, row: dict) -> Message:
        return cls(int(row["id"]), row["author"], row["body"], row["created_at"])

    def to_json(self) -> dict:
        return {
            "id": self.id,
            "author": self.author,
            "body": self.body,
            "created_at": self.created_at.isoformat(timespec="microseconds") + "Z",
        }


def latest(router: Router, limit: int, min_gtid: str | None = None) -> Routed[list[Message]]:
    def query(cursor):
        cursor.execute(
            f"SELECT {_COLUMNS} FROM messages ORDER BY created_at DESC, id DESC LIMIT %s",
            (limit,),
        )
        return [Message.from_row(row) for row in cursor.fetchall()]

    return router.read(query, min_gtid=min_gtid)


def get(router: Router, message_id: int, min_gtid: str | None = None) -> Routed[Message | None]:
    def query(cursor):
        cursor.execute(f"SELECT {_COLUMNS} FROM messages WHERE id = %s", (message_id,))
        row = cursor.fetchone()
        return Message.from_row(row) if row else None

    return router.read(query, min_gtid=min_gtid)


@dataclass(frozen=True)
class Posted:
    message: Message
    replayed: bool  # the key was there already: this is the first post's message
    position: str | None = None  # a replay's read-your-writes position (see create)


class KeyReused(Exception):
    """The idempotency key was used before for a different message."""

    def __init__(self, key: str):
        super().__init__(f"idempotency key {key!r} was used for a different message")
        self.key = key


def fingerprint(new: NewMessage) -> bytes:
    """What a replay must repeat exactly: the message as validated (trimmed)."""
    return hashlib.sha256(json.dumps([new.author, new.body]).encode()).digest()


def create(router: Router, new: NewMessage, key: str) -> Written[Posted]:
    """Store a message under an idempotency key, or return the one stored under it before.

    Raises KeyReused if the key was stored with a different message.
    """
    digest = fingerprint(new)

    def insert(cursor):
        try:
            cursor.execute(
                "INSERT INTO idempotency_keys (idempotency_key, request_hash) VALUES (%s, %s)",
                (key, digest),
            )
        except pymysql.err.IntegrityError as exc:
            if exc.args[0] != ER_DUP_ENTRY:
                raise
            return _replay(cursor, key, digest)
        cursor.execute(
            "INSERT INTO messages (author, body) VALUES (%s, %s)", (new.author, new.body)
        )
        message_id = cursor.lastrowid
        cursor.execute(
            "UPDATE idempotency_keys SET message_id = %s WHERE idempotency_key = %s",
            (message_id, key),
        )
        cursor.execute(f"SELECT {_COLUMNS} FROM messages WHERE id = %s", (message_id,))
        return Posted(Message.from_row(cursor.fetchone()), replayed=False)

    # The key makes it safe to repeat the whole transaction after any failure.
    written = router.write(insert, idempotent=True)
    if written.value.replayed:
        # The transaction wrote nothing, so @@last_gtid is not this post's: hand the
        # client the primary's whole position instead, which includes the first post.
        return replace(written, gtid=written.value.position)
    return written


def _replay(cursor, key: str, digest: bytes) -> Posted:
    # A locking read sees the latest committed row: the one whose commit released the
    # lock the INSERT above waited for.
    cursor.execute(
        f"SELECT k.request_hash, {', '.join('m.' + c for c in _COLUMNS.split(', '))} "
        "FROM idempotency_keys k JOIN messages m ON m.id = k.message_id "
        "WHERE k.idempotency_key = %s LOCK IN SHARE MODE",
        (key,),
    )
    row = cursor.fetchone()
    if row is None:  # a key is only ever committed together with its message
        raise RuntimeError(f"idempotency key {key!r} has no message")
    if bytes(row["request_hash"]) != digest:
        raise KeyReused(key)
    cursor.execute("SELECT @@global.gtid_binlog_pos AS position")
    position = cursor.fetchone()["position"] or None
    return Posted(Message.from_row(row), replayed=True, position=position)


class KeyPurger:
    """Deletes idempotency keys older than KEY_TTL_HOURS, a batch at a time.

    Run after a successful post, at most once per `every` seconds per process (sooner
    while a full batch came back, i.e. a backlog is being worked off). Each run is one
    DELETE on the primary that walks the created_at index from its oldest end and stops
    after `batch` rows: a short transaction whose locks are all on expired keys, which no
    new post touches (new keys are at the other end of the index). Two processes purging
    at once just take turns on the same rows. Failures are logged and left for the next
    run: a key kept longer is harmless.
    """

    def __init__(
        self,
        router: Router,
        *,
        every: float = 60.0,
        batch: int = 1000,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.router = router
        self.every = every
        self.batch = batch
        self._clock = clock
        self._due = clock()  # the first post of a process purges
        self._running = threading.Lock()

    def maybe_purge(self) -> int | None:
        """Purge if due and no other thread of this process is at it; rows deleted."""
        if self._clock() < self._due or not self._running.acquire(blocking=False):
            return None
        try:
            if self._clock() < self._due:
                return None
            self._due = self._clock() + self.every
            deleted = self.purge()
            if deleted >= self.batch:
                self._due = self._clock()  # more where these came from
            return deleted
        except (NodeUnavailable, pymysql.err.Error) as exc:
            log.warning("could not delete old idempotency keys: %s", exc)
            return None
        finally:
            self._running.release()

    def purge(self) -> int:
        def delete(cursor):
            cursor.execute(
                "DELETE FROM idempotency_keys "
                f"WHERE created_at < NOW(6) - INTERVAL {int(KEY_TTL_HOURS)} HOUR "
                "ORDER BY created_at LIMIT %s",
                (self.batch,),
            )
            return cursor.rowcount

        return self.router.run_on_primary(delete)
