"""Per-key limits (sans-I/O): request rate, concurrent streams, control sockets.

Every limit is per API key's tenant and per gateway instance (as a reverse proxy's
``limit_req``/``limit_conn`` are per server): with N gateways behind a balancer a tenant gets
up to N times each.  A limit of 0 is no limit.  A refusal is :class:`RateLimited` (429
``rate_limited``) with the whole seconds after which a retry can succeed.

- **Rate**: a token bucket per tenant, ``requests_per_s`` refilled, ``burst`` deep.  Every
  gateway request counts but a stop: a stop is never refused, since refusing it wastes compute.
- **Streams**: the tenant's streams this gateway admitted and has not seen finish.
- **Control sockets**: the tenant's open control WebSockets on this gateway.
"""

from __future__ import annotations

import math

from tokenrelay.runtime.config import QuotaLimits
from tokenrelay.wire.errors import RateLimited


class TokenBucket:
    """``rate_per_s`` tokens a second, at most ``capacity`` saved up."""

    __slots__ = ("_capacity", "_level", "_rate_per_s", "_updated")

    def __init__(self, rate_per_s: float, capacity: float, now: float) -> None:
        self._rate_per_s = rate_per_s
        self._capacity = capacity
        self._level = capacity
        self._updated = now

    def take(self, now: float) -> float:
        """Take one token: 0.0 if there was one, else the seconds until there will be (nothing is taken)."""
        self._level = min(self._capacity, self._level + (now - self._updated) * self._rate_per_s)
        self._updated = now
        if self._level >= 1.0:
            self._level -= 1.0
            return 0.0
        return (1.0 - self._level) / self._rate_per_s


def _retry_after_s(wait_s: float) -> int:
    return max(1, math.ceil(wait_s))


class TenantQuotas:
    """The live counts behind :class:`QuotaLimits`, for the tenants of one gateway."""

    def __init__(self, limits: QuotaLimits) -> None:
        self.limits = limits
        self._buckets: dict[str, TokenBucket] = {}
        self._streams: dict[str, set[str]] = {}
        self._stream_tenants: dict[str, str] = {}
        self._sockets: dict[str, int] = {}

    # -- rate ------------------------------------------------------------------------------------

    def check_rate(self, tenant: str, now: float) -> None:
        """Count one request of ``tenant`` at ``now`` (monotonic seconds), or refuse it."""
        rate = self.limits.requests_per_s
        if rate <= 0:
            return
        bucket = self._buckets.get(tenant)
        if bucket is None:
            burst = self.limits.burst or max(1.0, rate)
            bucket = self._buckets[tenant] = TokenBucket(rate, burst, now)
        wait_s = bucket.take(now)
        if wait_s > 0:
            raise RateLimited(
                f"more than {rate:g} requests a second for this key", retry_after_s=_retry_after_s(wait_s)
            )

    # -- concurrent streams ----------------------------------------------------------------------

    def check_streams(self, tenant: str) -> None:
        """Refuse a new stream of ``tenant`` when it has its limit of streams running here."""
        limit = self.limits.max_streams
        if limit > 0 and len(self._streams.get(tenant, ())) >= limit:
            raise RateLimited(f"this key has {limit} streams running already (the limit)", retry_after_s=1)

    def stream_started(self, tenant: str, stream_id: str) -> None:
        """``stream_id`` of ``tenant`` was admitted; it counts until :meth:`stream_ended`."""
        if self.limits.max_streams > 0:
            self._streams.setdefault(tenant, set()).add(stream_id)
            self._stream_tenants[stream_id] = tenant

    def stream_ended(self, stream_id: str) -> None:
        """``stream_id`` finished (or never will run); unknown ids are ignored."""
        tenant = self._stream_tenants.pop(stream_id, None)
        if tenant is None:
            return
        running = self._streams[tenant]
        running.discard(stream_id)
        if not running:
            del self._streams[tenant]

    def running(self, tenant: str) -> frozenset[str]:
        """The streams counted against ``tenant`` now."""
        return frozenset(self._streams.get(tenant, ()))

    # -- control sockets -------------------------------------------------------------------------

    def socket_opened(self, tenant: str) -> None:
        """Count a control socket of ``tenant``, or refuse it at the limit (nothing is counted then)."""
        limit = self.limits.max_control_sockets
        count = self._sockets.get(tenant, 0)
        if limit > 0 and count >= limit:
            raise RateLimited(f"this key has {limit} control sockets open already (the limit)", retry_after_s=1)
        self._sockets[tenant] = count + 1

    def socket_closed(self, tenant: str) -> None:
        """A control socket counted by :meth:`socket_opened` closed."""
        count = self._sockets.get(tenant, 0) - 1
        if count > 0:
            self._sockets[tenant] = count
        else:
            self._sockets.pop(tenant, None)
