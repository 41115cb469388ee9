"""What the contract fuzzer taught the server (issue 11), in memory.

A value the OpenAPI document allows must be accepted as a client's JSON
or number type writes it: a number in a query may carry a long fraction
or an exponent, ``5.0`` is an integer (JSON Schema says so), and any
RFC 3339 instant is a ``start``.
"""
from __future__ import annotations

import datetime as dt

import pytest

from eventbus.errors import InvalidInput
from eventbus.http.params import start_param, timeout_param
from eventbus.model import json_integer
from tests.unit.test_routing import BASE, Bus

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("written, seconds", [
    ("0.27414240308103993", 0.27414240308103993), ("2.5e-1", 0.25), ("1E2", 100.0), ("007", 7.0),
    ("5e-324", 5e-324), ("300", 300.0),
])
def test_a_timeout_is_read_as_a_number_type_prints_it(written, seconds):
    assert timeout_param(written, 300) == seconds


@pytest.mark.parametrize("written", ["300.000000001", "1e3", "-1", "nan", "inf", "0x1", "1e", ".5", "1.", "+1", ""])
def test_a_timeout_that_is_no_number_or_beyond_the_cap_is_refused(written):
    with pytest.raises(InvalidInput):
        timeout_param(written, 300)


def test_a_peek_with_an_exponent_timeout_waits_that_long():
    bus = Bus()
    assert bus.call("GET", f"{BASE}?peek=3&timeout=2.5e-1")[0] == 204
    assert bus.notifier.calls == [("next_event", ("ctx", "ch", 3, 0.25))]


@pytest.mark.parametrize("written, instant", [
    ("1e3", EPOCH + dt.timedelta(seconds=1000)),
    ("1.0000005", EPOCH + dt.timedelta(microseconds=1_000_001)),  # rounded up: >= start
    ("1969-12-31T23:59:59Z", EPOCH),
    ("0001-01-01T00:00:00+01:00", EPOCH),
    ("9999-12-31T23:59:59-01:00", dt.datetime.max.replace(tzinfo=UTC)),
    ("2024-02-29T12:00:00.5+23:59", dt.datetime(2024, 2, 28, 12, 1, 0, 500000, tzinfo=UTC)),
])
def test_any_instant_is_a_start_and_one_before_1970_selects_everything(written, instant):
    assert start_param(written) == instant


@pytest.mark.parametrize("written", ["253402300800", "2.6e11", "-1", "2024-13-01", "abc"])
def test_a_start_beyond_the_year_9999_in_seconds_or_no_instant_is_refused(written):
    with pytest.raises(InvalidInput):
        start_param(written)


@pytest.mark.parametrize("value, integer", [
    (5, 5), (5.0, 5), (-3.0, -3), (2.0**53, 2**53), (2.5, None), (2.0**53 + 2, None), (True, None),
    ("5", None), (None, None), (float("inf"), None),
])
def test_an_integral_float_is_an_integer_while_it_is_exact(value, integer):
    assert json_integer(value) == integer


def test_a_consumer_configured_with_integral_floats_gets_those_integers():
    bus = Bus()
    bus.call("PUT", "http://bus.test/consumers/ctx/ch/c", data=b'{"start": 5.0, "max_deliveries": 3.0}')
    [(name, args)] = bus.store.calls[:1]  # (the fake store has no consumer to answer with)
    config = args[-1]
    assert name == "configure" and (config.start, config.max_deliveries) == (5, 3)
    assert type(config.start) is int and type(config.max_deliveries) is int
