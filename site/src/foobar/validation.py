"""Checks on everything a client sends, before it gets near the database.

Lengths are counted in characters (code points), as MariaDB counts VARCHAR in utf8mb4, so
anything accepted here fits the columns. Control characters are refused because they
are never meant for a message board and make logs and terminals lie; the one exception is
line breaks and tabs in a message body, which a textarea produces.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

AUTHOR_MAX = 40
BODY_MAX = 500
LIMIT_DEFAULT = 50
LIMIT_MAX = 200


class ValidationError(Exception):
    """Bad client input; `errors` maps each offending field to what is wrong with it."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        self.field = next(iter(errors))
        super().__init__(f"{self.field}: {errors[self.field]}")


@dataclass(frozen=True)
class NewMessage:
    author: str
    body: str


def _clean(value: Any, max_len: int, allowed_controls: str) -> str:
    """Return the trimmed text or raise ValueError/TypeError saying what is wrong."""
    if value is None:
        raise ValueError("is required")
    if not isinstance(value, str):
        raise TypeError("must be a string")
    text = value.replace("\r\n", "\n").strip()
    if not text:
        raise ValueError("must not be empty")
    if len(text) > max_len:
        raise ValueError(f"must be at most {max_len} characters")
    for ch in text:
        category = unicodedata.category(ch)
        if category == "Cs":
            raise ValueError("must be valid Unicode text")
        if category == "Cc" and ch not in allowed_controls:
            raise ValueError("must not contain control characters")
    return text


def validate_message(data: Mapping[str, Any]) -> NewMessage:
    """Validate {"author": ..., "body": ...} from a form or a JSON object."""
    errors: dict[str, str] = {}
    cleaned: dict[str, str] = {}
    for field, max_len, allowed in (("author", AUTHOR_MAX, ""), ("body", BODY_MAX, "\n\t")):
        try:
            cleaned[field] = _clean(data.get(field), max_len, allowed)
        except (ValueError, TypeError) as exc:
            errors[field] = str(exc)
    if errors:
        raise ValidationError(errors)
    return NewMessage(cleaned["author"], cleaned["body"])


def parse_limit(text: str | None) -> int:
    """The ?limit= of a listing: 1..LIMIT_MAX, default LIMIT_DEFAULT."""
    if text is None:
        return LIMIT_DEFAULT
    text = text.strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 4 and 1 <= int(text) <= LIMIT_MAX):
        raise ValidationError({"limit": f"must be an integer from 1 to {LIMIT_MAX}"})
    return int(text)
