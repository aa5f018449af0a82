"""What a load test does, decided before any I/O (sans-I/O): its configuration and each stream's plan.

:class:`Planner` hands out one :class:`StreamPlan` per stream: its prompt and ``max_tokens``
from the mixes, whether it is a reader that never reads, and, for the streams that are stopped
over the control WebSocket, after how many tokens. Selection is exact and evenly spread
(``--stop-fraction 0.2`` of 500 streams stops 100 of them); the stop points are random, from
``seed``.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any, Generic, TypeVar

from tokenrelay.loadtest.apis import DEFAULT_MODEL, Api

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8080"
DEFAULT_STREAMS = 100
DEFAULT_MAX_TOKENS = "64"
DEFAULT_PROMPT = "Tell me a story about token streaming, number {i}."
DEFAULT_DRAIN_S = 30.0
"""Seconds in-flight streams get to finish once no more are started; then they are cut off."""
DEFAULT_SAMPLE_INTERVAL_S = 1.0
DEFAULT_REQUEST_TIMEOUT_S = 30.0
"""A start, a status poll or a stop not answered within this fails with ``timeout``."""
DEFAULT_READ_TIMEOUT_S = 60.0
"""An events connection silent this long (no event, no heartbeat) fails with ``timeout``."""
MAX_MIX_WEIGHT = 10_000
"""The weights of one mix add up to at most this (the weighted round-robin cycle is that long)."""

T = TypeVar("T")


class Mix(Generic[T]):
    """Values picked by stream number: plain round-robin, or smooth weighted round-robin.

    ``pick(i)`` is deterministic and every window of ``sum(weights)`` streams holds each value
    exactly ``weight`` times, spread out rather than in runs.
    """

    def __init__(self, entries: list[tuple[T, int]]) -> None:
        if not entries:
            raise ValueError("a mix needs at least one value")
        if any(weight < 1 for _, weight in entries):
            raise ValueError("weights must be positive integers")
        total = sum(weight for _, weight in entries)
        if total > MAX_MIX_WEIGHT:
            raise ValueError(f"the weights add up to {total}, over the limit of {MAX_MIX_WEIGHT}")
        self.entries = entries
        self._cycle = _smooth_round_robin(entries)

    def pick(self, i: int) -> T:
        """The value for stream number ``i``."""
        return self._cycle[i % len(self._cycle)]

    def describe(self) -> list[dict[str, Any]]:
        """The mix as JSON: ``[{"value", "weight"}]``."""
        return [{"value": value, "weight": weight} for value, weight in self.entries]


def _smooth_round_robin(entries: list[tuple[T, int]]) -> list[T]:
    # nginx's smooth weighted round-robin: each turn every value gains its weight, the richest is
    # picked and pays the total; weights 5,1,1 give a a b a c a a rather than a a a a a b c.
    total = sum(weight for _, weight in entries)
    current = [0] * len(entries)
    cycle: list[T] = []
    for _ in range(total):
        for k, (_, weight) in enumerate(entries):
            current[k] += weight
        best = max(range(len(entries)), key=current.__getitem__)
        current[best] -= total
        cycle.append(entries[best][0])
    return cycle


def parse_int_mix(text: str) -> Mix[int]:
    """``"64"``, ``"16,64,256"`` (round-robin) or ``"16:3,256:1"`` (``value:weight``)."""
    entries: list[tuple[int, int]] = []
    for part in text.split(","):
        value, colon, weight = part.strip().partition(":")
        try:
            entries.append((int(value), int(weight) if colon else 1))
        except ValueError:
            raise ValueError(f"{part.strip()!r} is not an integer or integer:weight") from None
    return Mix(entries)


def prompt_mix(prompts: list[str]) -> Mix[str]:
    """Round-robin over prompts; a prompt given twice weighs twice."""
    counts: dict[str, int] = {}
    for prompt in prompts:
        counts[prompt] = counts.get(prompt, 0) + 1
    return Mix(list(counts.items()))


@dataclass(frozen=True)
class LoadTestConfig:
    """Every option of ``tokenrelay loadtest``, typed (see ``tokenrelay loadtest --help``)."""

    gateway_url: str = DEFAULT_GATEWAY_URL
    """The target's base URL (no ``/v1``): the gateway for the native API, the server for the others."""
    api: Api = Api.NATIVE
    model: str = DEFAULT_MODEL
    """The model each request names (not sent with the native API: the gateway picks)."""
    api_key: str | None = None
    streams: int = DEFAULT_STREAMS
    concurrency: int | None = None
    """Streams open at once at most; ``None``: as many as ``streams``."""
    ramp_per_s: float = 0.0
    """New streams per second; 0: as fast as ``concurrency`` allows."""
    duration_s: float = 0.0
    """Stop starting streams after this many seconds; 0: start all ``streams``."""
    drain_s: float = DEFAULT_DRAIN_S
    max_tokens: Mix[int] = field(default_factory=lambda: parse_int_mix(DEFAULT_MAX_TOKENS))
    prompts: Mix[str] = field(default_factory=lambda: prompt_mix([DEFAULT_PROMPT]))
    stop_fraction: float = 0.0
    never_read_fraction: float = 0.0
    metrics_urls: tuple[str, ...] = ()
    sample_interval_s: float = DEFAULT_SAMPLE_INTERVAL_S
    request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S
    read_timeout_s: float = DEFAULT_READ_TIMEOUT_S
    source_addresses: int = 1
    seed: int = 0
    json_path: str | None = None
    report_dir: str | None = None
    quiet: bool = False
    event_loop: str = "auto"
    """The load test's own event loop (``auto``: uvloop where installed); it is part of what is measured."""

    def __post_init__(self) -> None:
        checks = (
            (self.streams >= 1, "--streams must be at least 1"),
            (self.concurrency is None or self.concurrency >= 1, "--concurrency must be at least 1"),
            (self.ramp_per_s >= 0, "--ramp-per-s must not be negative"),
            (self.duration_s >= 0, "--duration-s must not be negative"),
            (self.drain_s >= 0, "--drain-s must not be negative"),
            (0 <= self.stop_fraction <= 1, "--stop-fraction must be between 0 and 1"),
            (0 <= self.never_read_fraction <= 1, "--never-read-fraction must be between 0 and 1"),
            (self.stop_fraction + self.never_read_fraction <= 1, "--stop-fraction plus --never-read-fraction > 1"),
            (self.sample_interval_s > 0, "--sample-interval-s must be positive"),
            (self.request_timeout_s > 0, "--request-timeout-s must be positive"),
            (self.read_timeout_s > 0, "--read-timeout-s must be positive"),
            (1 <= self.source_addresses <= 254, "--source-addresses must be between 1 and 254"),
        )
        for ok, message in checks:
            if not ok:
                raise ValueError(message)
        self._check_native_only()

    def _check_native_only(self) -> None:
        """Stops go over tokenrelay's control WebSocket and never-read readers hold its events URL: other APIs
        have neither."""
        if self.api is Api.NATIVE:
            return
        native_only = (("--stop-fraction", self.stop_fraction), ("--never-read-fraction", self.never_read_fraction))
        for flag, value in native_only:
            if value:
                raise ValueError(f"{flag} works with --api native only, not with --api {self.api.value}")

    @property
    def max_open(self) -> int:
        """Streams open at once at most."""
        return self.concurrency or self.streams

    def to_json(self) -> dict[str, Any]:
        """Every option, as the JSON report's ``config`` (the API key is never written out)."""
        out = asdict(self)
        out["api"] = self.api.value
        out["api_key"] = "<set>" if self.api_key else None
        out["concurrency"] = self.max_open
        out["max_tokens"] = self.max_tokens.describe()
        out["prompts"] = self.prompts.describe()
        out["metrics_urls"] = list(self.metrics_urls)
        return out


@dataclass(frozen=True, slots=True)
class StreamPlan:
    """What one stream does."""

    number: int
    prompt: str
    max_tokens: int
    never_read: bool = False
    stop_after_tokens: int | None = None
    """Send ``stop`` over the control WebSocket once this many tokens arrived (``None``: never)."""


class Planner:
    """Plans streams one by one, in O(1) memory.

    A stream is a never-read reader when the running count of such streams should grow by one at
    it (``round((n + 1) * fraction) > round(n * fraction)``); the same rule over the remaining
    streams picks the stopped ones, so both counts are exact and evenly spread over the run.
    """

    def __init__(self, config: LoadTestConfig) -> None:
        self._config = config
        self._rng = random.Random(config.seed)
        rest = 1 - config.never_read_fraction
        self._stop_share = min(1.0, config.stop_fraction / rest) if rest > 0 else 0.0
        self._readers = 0
        """Streams planned that are read (the denominator of the stop share)."""

    def plan(self, number: int) -> StreamPlan:
        """The plan of stream ``number`` (call with 0, 1, 2, … in order)."""
        prompt = self._config.prompts.pick(number).replace("{i}", str(number))
        max_tokens = self._config.max_tokens.pick(number)
        if _takes_turn(number, self._config.never_read_fraction):
            return StreamPlan(number, prompt, max_tokens, never_read=True)
        reader = self._readers
        self._readers += 1
        stop_after: int | None = None
        if _takes_turn(reader, self._stop_share):
            stop_after = self._rng.randint(1, max(1, max_tokens - 1))
        return StreamPlan(number, prompt, max_tokens, stop_after_tokens=stop_after)


def _takes_turn(n: int, fraction: float) -> bool:
    return round((n + 1) * fraction) > round(n * fraction)
