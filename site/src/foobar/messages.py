"""The board's SQL, all parameterised, each call routed as a read or a write."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from foobar.db.router import Routed, Router, Written
from foobar.validation import NewMessage

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


def create(router: Router, new: NewMessage) -> Written[Message]:
    def insert(cursor):
        cursor.execute(
            "INSERT INTO messages (author, body) VALUES (%s, %s)", (new.author, new.body)
        )
        cursor.execute(f"SELECT {_COLUMNS} FROM messages WHERE id = %s", (cursor.lastrowid,))
        return Message.from_row(cursor.fetchone())

    return router.write(insert)


def count(router: Router) -> Routed[int]:
    def query(cursor):
        cursor.execute("SELECT COUNT(*) AS n FROM messages")
        return int(cursor.fetchone()["n"])

    return router.read(query)
