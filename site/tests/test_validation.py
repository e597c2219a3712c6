"""Input checks: what a client may post and how a listing limit is read."""

import pytest

from foobar.validation import (
    LIMIT_DEFAULT,
    LIMIT_MAX,
    NewMessage,
    ValidationError,
    parse_limit,
    validate_message,
)


def test_valid_message_is_trimmed():
    assert validate_message({"author": "  ann ", "body": "\nhello  "}) == NewMessage("ann", "hello")


def test_lengths_count_characters_not_bytes():
    author = "é" * 40
    body = "😀" * 500
    assert validate_message({"author": author, "body": body}) == NewMessage(author, body)


@pytest.mark.parametrize(
    ("data", "field", "words"),
    [
        ({"body": "x"}, "author", "required"),
        ({"author": "a"}, "body", "required"),
        ({"author": "", "body": "x"}, "author", "empty"),
        ({"author": "   ", "body": "x"}, "author", "empty"),
        ({"author": "a" * 41, "body": "x"}, "author", "at most 40"),
        ({"author": "a", "body": "b" * 501}, "body", "at most 500"),
        ({"author": 7, "body": "x"}, "author", "string"),
        ({"author": "a", "body": ["x"]}, "body", "string"),
        ({"author": None, "body": "x"}, "author", "required"),
        ({"author": {"$ne": 1}, "body": "x"}, "author", "string"),
        ({"author": "a\x00b", "body": "x"}, "author", "control"),
        ({"author": "a\nb", "body": "x"}, "author", "control"),
        ({"author": "a", "body": "bell\x07"}, "body", "control"),
        ({"author": "a", "body": "esc \x1b[31m red"}, "body", "control"),
        ({"author": "a", "body": "del\x7f"}, "body", "control"),
        ({"author": "a", "body": "half \ud800 surrogate"}, "body", "Unicode"),
    ],
)
def test_bad_messages_name_the_field(data, field, words):
    with pytest.raises(ValidationError) as caught:
        validate_message(data)
    assert caught.value.field == field
    assert words in caught.value.errors[field]


def test_all_bad_fields_are_reported():
    with pytest.raises(ValidationError) as caught:
        validate_message({})
    assert set(caught.value.errors) == {"author", "body"}


def test_body_keeps_line_breaks_and_tabs():
    new = validate_message({"author": "a", "body": "line one\r\nline\ttwo"})
    assert new.body == "line one\nline\ttwo"


def test_injection_strings_are_just_text():
    body = "'); DROP TABLE messages; --"
    assert validate_message({"author": "x' OR '1'='1", "body": body}).body == body


@pytest.mark.parametrize(("text", "value"), [(None, LIMIT_DEFAULT), ("1", 1), ("200", 200)])
def test_limit(text, value):
    assert parse_limit(text) == value


@pytest.mark.parametrize(
    "text", ["0", "201", "-1", "abc", "", "1.5", "²", "9" * 5000, "1e2", " ", "0x10"]
)
def test_bad_limit(text):
    with pytest.raises(ValidationError) as caught:
        parse_limit(text)
    assert caught.value.field == "limit"
    assert str(LIMIT_MAX) in caught.value.errors["limit"]
