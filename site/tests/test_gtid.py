"""GTID positions and the signed read-your-writes cookie."""

import pytest
from itsdangerous import URLSafeTimedSerializer

from foobar.db import gtid


def test_merge_keeps_highest_sequence_per_domain():
    assert gtid.merge("0-1-5", "0-1-9") == "0-1-9"
    assert gtid.merge("0-1-9", "0-2-7") == "0-1-9"
    assert gtid.merge("0-1-5,1-3-2", "1-3-8") == "0-1-5,1-3-8"
    assert gtid.merge(None, "0-1-3") == "0-1-3"
    assert gtid.merge(None, "") is None


@pytest.mark.parametrize("text", ["x", "0-1", "0-1-2-3", "a-b-c", "0-1-2,0-1-3", "-1-1-1"])
def test_bad_positions_are_refused(text):
    with pytest.raises(ValueError):
        gtid.parse_position(text)


def test_too_many_domains_are_refused():
    with pytest.raises(ValueError):
        gtid.parse_position(",".join(f"{d}-1-1" for d in range(gtid.MAX_DOMAINS + 1)))


def test_cookie_round_trip():
    cookie = gtid.GtidCookie("secret")
    assert cookie.loads(cookie.dumps("0-1-42")) == "0-1-42"


@pytest.mark.parametrize("value", [None, "", "garbage", "0-1-42", "a.b.c"])
def test_unsigned_or_garbage_cookie_is_ignored(value):
    assert gtid.GtidCookie("secret").loads(value) is None


def test_tampered_cookie_is_ignored():
    cookie = gtid.GtidCookie("secret")
    value = cookie.dumps("0-1-42")
    payload, _, rest = value.partition(".")
    forged = gtid.GtidCookie("secret").dumps("0-1-99999").partition(".")[0] + "." + rest
    assert cookie.loads(forged) is None
    assert cookie.loads(value[:-2] + ("AA" if value[-2:] != "AA" else "BB")) is None
    assert payload


def test_cookie_signed_with_another_key_is_ignored():
    assert gtid.GtidCookie("secret").loads(gtid.GtidCookie("other").dumps("0-1-1")) is None


def test_expired_cookie_is_ignored():
    cookie = gtid.GtidCookie("secret", max_age=-1)
    assert cookie.loads(cookie.dumps("0-1-1")) is None


def test_signed_but_malformed_payload_is_ignored():
    serializer = URLSafeTimedSerializer("secret", salt="foobar-gtid")
    cookie = gtid.GtidCookie("secret")
    assert cookie.loads(serializer.dumps(["0-1-1"])) is None
    assert cookie.loads(serializer.dumps("0-1-1; SELECT SLEEP(10)")) is None
