"""Per-key limits, sans-I/O: a token bucket per key for the request rate, counted streams and control
sockets; a refusal is 429 ``rate_limited`` with the whole seconds after which a retry can succeed."""

from __future__ import annotations

import pytest

from tokenrelay.gateway.quotas import TenantQuotas, TokenBucket
from tokenrelay.runtime.config import QuotaLimits
from tokenrelay.wire.errors import ErrorCode, RateLimited


def test_a_bucket_gives_its_burst_at_once_then_its_rate() -> None:
    bucket = TokenBucket(2.0, 3.0, now=0.0)
    assert [bucket.take(0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(0.0) == pytest.approx(0.5)
    assert bucket.take(0.5) == 0.0
    assert bucket.take(0.5) == pytest.approx(0.5)


def test_a_bucket_saves_up_no_more_than_its_burst() -> None:
    bucket = TokenBucket(1.0, 2.0, now=0.0)
    assert [bucket.take(1000.0) for _ in range(3)][:2] == [0.0, 0.0]
    assert bucket.take(1000.0) > 0


def test_a_key_over_its_rate_is_refused_with_429_and_retry_after() -> None:
    quotas = TenantQuotas(QuotaLimits(requests_per_s=0.5, burst=2))
    quotas.check_rate("acme", 0.0)
    quotas.check_rate("acme", 0.0)
    with pytest.raises(RateLimited) as refused:
        quotas.check_rate("acme", 0.0)
    assert (refused.value.code, refused.value.http_status, refused.value.retry_after_s) == (
        ErrorCode.RATE_LIMITED,
        429,
        2,
    )
    quotas.check_rate("acme", 2.0)  # one token back after 1 / 0.5 s


def test_each_key_has_a_bucket_of_its_own() -> None:
    quotas = TenantQuotas(QuotaLimits(requests_per_s=1.0))
    quotas.check_rate("acme", 0.0)
    with pytest.raises(RateLimited):
        quotas.check_rate("acme", 0.0)
    quotas.check_rate("globex", 0.0)


def test_no_rate_limit_when_it_is_zero() -> None:
    quotas = TenantQuotas(QuotaLimits())
    for _ in range(10_000):
        quotas.check_rate("acme", 0.0)


def test_a_key_with_its_limit_of_streams_running_is_refused_until_one_ends() -> None:
    quotas = TenantQuotas(QuotaLimits(max_streams=2))
    for stream_id in ("a", "b"):
        quotas.check_streams("acme")
        quotas.stream_started("acme", stream_id)
    with pytest.raises(RateLimited) as refused:
        quotas.check_streams("acme")
    assert refused.value.code == ErrorCode.RATE_LIMITED
    quotas.check_streams("globex")
    quotas.stream_ended("a")
    quotas.stream_ended("a")  # twice (a done message and a runner-lost sweep) frees one slot once
    quotas.stream_ended("unknown")
    quotas.check_streams("acme")
    assert quotas.running("acme") == frozenset({"b"})


def test_control_sockets_are_counted_per_key_and_freed_on_close() -> None:
    quotas = TenantQuotas(QuotaLimits(max_control_sockets=1))
    quotas.socket_opened("acme")
    with pytest.raises(RateLimited):
        quotas.socket_opened("acme")
    quotas.socket_opened("globex")
    quotas.socket_closed("acme")
    quotas.socket_opened("acme")
