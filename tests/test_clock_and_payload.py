"""Time and payload helpers."""

import math
import time

import pytest

import litejobs
from litejobs._clock import to_ms
from litejobs._payload import dumps, loads


def test_the_system_clock_reads_utc_milliseconds():
    before = time.time_ns() // 1_000_000
    now = litejobs.SystemClock().now_ms()
    assert isinstance(now, int)
    assert before <= now <= time.time_ns() // 1_000_000


def test_the_virtual_clock_moves_only_when_told():
    clock = litejobs.VirtualClock(now=1_000)
    assert clock.now_ms() == clock.now_ms() == 1_000
    clock.advance(1.5)
    clock.sleep(0.25)
    assert clock.now_ms() == 2_750
    assert clock.slept == [0.25]


@pytest.mark.parametrize(("seconds", "ms"), [(0, 0), (1, 1000), (0.0015, 2), (2.5, 2500)])
def test_seconds_become_whole_milliseconds(seconds, ms):
    assert to_ms(seconds, "x") == ms


@pytest.mark.parametrize("bad", [-1, -0.0001, math.nan, math.inf, "1", None, True])
def test_bad_durations_name_the_argument(bad):
    with pytest.raises(litejobs.ConfigError, match="lease"):
        to_ms(bad, "lease")


def test_payloads_are_compact_json_that_keeps_unicode():
    assert dumps({"a": ["é", 1]}, "p") == '{"a":["é",1]}'
    assert loads('{"a":["é",1]}', "p") == {"a": ["é", 1]}
    assert loads(None, "p") is None


def test_invalid_json_read_back_is_a_payload_error():
    with pytest.raises(litejobs.InvalidPayloadError, match="holds invalid JSON"):
        loads("{nope", "the body")
