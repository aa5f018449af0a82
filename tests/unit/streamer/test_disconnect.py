"""Spec of the one slow-consumer decision: numbers and a clock in, a disconnect value (or none) out."""

from __future__ import annotations

import dataclasses

import pytest

from tokenrelay.streamer.disconnect import (
    DEFAULT_MAX_HELD_EVENTS,
    FAILED_WRITE_GRACE_S,
    OVER_BUFFER,
    TOO_MANY_HELD,
    WRITE_STALLED,
    Disconnect,
    DisconnectLimits,
    decide,
)
from tokenrelay.wire.errors import ErrorCode

T0 = 1000.0
LIMITS = DisconnectLimits(max_buffered_bytes=1000, max_held_events=4, write_timeout_s=10.0, failed_write_grace_s=1.0)


def test_a_reader_within_every_limit_is_not_disconnected() -> None:
    assert decide(1000, 4, T0, T0 + 9.99, LIMITS) is None


def test_a_reader_with_nothing_buffered_held_or_in_flight_is_not_disconnected() -> None:
    assert decide(0, 0, None, T0, LIMITS) is None


def test_one_byte_past_max_buffered_bytes_disconnects_the_reader_as_a_slow_consumer() -> None:
    assert decide(1001, 0, None, T0, LIMITS) is OVER_BUFFER
    assert (OVER_BUFFER.code, OVER_BUFFER.message) == (ErrorCode.SLOW_CONSUMER, "the client did not read fast enough")


def test_one_event_past_max_held_events_disconnects_the_reader_as_a_slow_consumer() -> None:
    assert decide(0, 5, None, T0, LIMITS) is TOO_MANY_HELD
    assert (TOO_MANY_HELD.code, TOO_MANY_HELD.message) == (
        ErrorCode.SLOW_CONSUMER,
        "too many events held while catching up",
    )


def test_too_many_held_events_is_the_reason_given_when_the_bytes_are_over_too() -> None:
    assert decide(5000, 5, None, T0, LIMITS) is TOO_MANY_HELD


def test_a_write_in_progress_for_write_timeout_s_disconnects_the_reader_and_drops_its_connection() -> None:
    assert decide(0, 0, T0, T0 + 10.0, LIMITS) is WRITE_STALLED
    assert WRITE_STALLED.abort
    assert (WRITE_STALLED.code, WRITE_STALLED.message) == (
        ErrorCode.SLOW_CONSUMER,
        "the client did not take a write in time",
    )


def test_a_write_in_progress_for_less_than_write_timeout_s_is_left_to_finish() -> None:
    assert decide(0, 0, T0, T0 + 9.99, LIMITS) is None


def test_a_failed_reader_whose_write_stalls_for_failed_write_grace_s_is_dropped_before_the_write_timeout() -> None:
    assert decide(0, 0, T0, T0 + 1.5, LIMITS, failed_at=T0 + 0.5) is WRITE_STALLED
    assert decide(0, 0, T0, T0 + 1.4, LIMITS, failed_at=T0 + 0.5) is None


def test_a_failed_reader_with_no_write_in_progress_is_not_disconnected_for_its_failure() -> None:
    assert decide(0, 0, None, T0 + 100.0, LIMITS, failed_at=T0) is None


def test_buffer_and_held_disconnects_leave_the_connection_to_carry_the_error_event() -> None:
    assert not OVER_BUFFER.abort
    assert not TOO_MANY_HELD.abort


def test_the_default_limits_are_the_streamers_defaults() -> None:
    limits = DisconnectLimits()
    assert limits.max_held_events == DEFAULT_MAX_HELD_EVENTS == 4096
    assert limits.failed_write_grace_s == FAILED_WRITE_GRACE_S == 1.0
    assert limits.max_buffered_bytes == 1 << 20
    assert limits.write_timeout_s == 10.0


def test_a_disconnect_is_a_frozen_value() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        OVER_BUFFER.message = "changed"  # type: ignore[misc]
    assert Disconnect(ErrorCode.SLOW_CONSUMER, "the client did not read fast enough") == OVER_BUFFER
