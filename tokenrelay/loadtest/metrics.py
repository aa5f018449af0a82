"""Sampling each instance's ``/metrics`` during a load test.

:func:`parse_metrics` (sans-I/O) picks the few gauges the load test follows out of Prometheus
text; :class:`InstanceStats` keeps one instance's samples (a bounded :class:`SampleSeries`) and
its exact peaks; :class:`MetricsSampler` polls every instance every ``interval_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from tokenrelay.loadtest.stats import DEFAULT_MAX_POINTS, SampleSeries

log = logging.getLogger(__name__)

READERS_OPEN = "tokenrelay_streamer_readers_open"
CONTROL_SOCKETS_OPEN = "tokenrelay_gateway_control_sockets_open"
RSS_BYTES = "process_resident_memory_bytes"
CPU_SECONDS = "process_cpu_seconds_total"
FOLLOWED = (READERS_OPEN, CONTROL_SOCKETS_OPEN, RSS_BYTES, CPU_SECONDS)
_ROLE = re.compile(r"^tokenrelay_(gateway|streamer|runner)_", re.M)


def metrics_endpoint(url: str) -> str:
    """``http://host:port`` -> ``http://host:port/metrics``; a URL that already ends in ``/metrics`` is kept."""
    base = url.rstrip("/")
    return base if base.endswith("/metrics") else f"{base}/metrics"


def role_of(text: str) -> str | None:
    """Which tokenrelay role serves these metrics (``gateway``, ``streamer``, ``runner``), if any."""
    found = _ROLE.search(text)
    return found.group(1) if found else None


def parse_metrics(text: str, names: tuple[str, ...] = FOLLOWED) -> dict[str, float]:
    """The value of each of ``names`` in Prometheus text (summed over label sets); absent names are left out."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        for name in names:
            if not line.startswith(name):
                continue
            rest = line[len(name) :]
            if rest[:1] == "{":
                rest = rest.rpartition("}")[2]
            elif rest[:1] not in (" ", "\t"):
                continue  # a longer name that starts with this one
            fields = rest.split()
            if fields:
                with contextlib.suppress(ValueError):
                    found[name] = found.get(name, 0.0) + float(fields[0])
            break
    return found


@dataclass(frozen=True, slots=True)
class Sample:
    """One instance's gauges at ``t`` seconds into the run (``None``: the instance does not expose it)."""

    t: float
    url: str
    readers_open: float | None
    control_sockets_open: float | None
    rss_bytes: float | None
    cpu_s: float | None

    def to_json(self) -> dict[str, Any]:
        """``{"t", "url", "readers_open", "control_sockets_open", "rss_bytes", "cpu_s"}``."""
        rss = None if self.rss_bytes is None else int(self.rss_bytes)
        return {
            "t": round(self.t, 3),
            "url": self.url,
            "readers_open": self.readers_open,
            "control_sockets_open": self.control_sockets_open,
            "rss_bytes": rss,
            "cpu_s": self.cpu_s,
        }


def _max(current: float | None, value: float | None) -> float | None:
    if value is None:
        return current
    return value if current is None else max(current, value)


class InstanceStats:
    """One instance's samples (bounded) and the exact figures the report needs."""

    def __init__(self, url: str, *, max_points: int) -> None:
        self.url = url
        self.role: str | None = None
        self.series: SampleSeries[Sample] = SampleSeries(max_points=max_points)
        self.rss_start: float | None = None
        self.rss_max: float | None = None
        self.cpu_first: float | None = None
        self.cpu_last: float | None = None
        self.readers_open_max: float | None = None
        self.control_sockets_open_max: float | None = None
        self.failures = 0

    def add(self, t: float, values: dict[str, float]) -> Sample:
        """Record one scrape's values."""
        sample = Sample(
            t,
            self.url,
            values.get(READERS_OPEN),
            values.get(CONTROL_SOCKETS_OPEN),
            values.get(RSS_BYTES),
            values.get(CPU_SECONDS),
        )
        self.series.add(sample)
        if self.rss_start is None:
            self.rss_start = sample.rss_bytes
        self.rss_max = _max(self.rss_max, sample.rss_bytes)
        if sample.cpu_s is not None:
            self.cpu_first = sample.cpu_s if self.cpu_first is None else self.cpu_first
            self.cpu_last = sample.cpu_s
        self.readers_open_max = _max(self.readers_open_max, sample.readers_open)
        self.control_sockets_open_max = _max(self.control_sockets_open_max, sample.control_sockets_open)
        return sample

    @property
    def label(self) -> str:
        """``"streamer 127.0.0.1:8081"`` (the role, when known, and the address)."""
        address = self.url.split("://", 1)[-1].rstrip("/").removesuffix("/metrics")
        return f"{self.role} {address}" if self.role else address

    @property
    def cpu_s(self) -> float | None:
        """CPU seconds the instance used between the first and the last sample."""
        if self.cpu_first is None or self.cpu_last is None:
            return None
        return self.cpu_last - self.cpu_first

    def to_json(self, tokens_delivered: int) -> dict[str, Any]:
        """``{"rss_bytes_max", "rss_bytes_start", "cpu_s", "readers_open_max", …}``."""
        cpu = self.cpu_s
        per_token = cpu * 1e6 / tokens_delivered if cpu is not None and tokens_delivered else None
        return {
            "role": self.role,
            "rss_bytes_max": None if self.rss_max is None else int(self.rss_max),
            "rss_bytes_start": None if self.rss_start is None else int(self.rss_start),
            "cpu_s": None if cpu is None else round(cpu, 4),
            "readers_open_max": self.readers_open_max,
            "control_sockets_open_max": self.control_sockets_open_max,
            "cpu_us_per_token": per_token,
            "failed_scrapes": self.failures,
        }


class MetricsSampler:
    """Scrapes every ``/metrics`` URL every ``interval_s`` until :meth:`stop`; one failed scrape is
    logged and counted, never fatal. Each instance keeps at most ``max_points`` samples."""

    def __init__(
        self,
        base_urls: tuple[str, ...],
        *,
        interval_s: float,
        timeout_s: float,
        headers: dict[str, str],
        started_at: float,
        max_points: int = DEFAULT_MAX_POINTS,
    ) -> None:
        self.instances = {url: InstanceStats(url, max_points=max_points) for url in base_urls}
        self.interval_s = interval_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._headers = headers
        self._started_at = started_at
        self._stop = asyncio.Event()

    async def run(self) -> None:
        """Sample now, then every ``interval_s``, and once more when stopped."""
        if not self.instances:
            return
        async with aiohttp.ClientSession(timeout=self._timeout, headers=self._headers) as session:
            while True:
                await self.sample_all(session)
                if self._stop.is_set():
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), self.interval_s)

    def stop(self) -> None:
        """Take one last sample and end :meth:`run`."""
        self._stop.set()

    async def sample_all(self, session: aiohttp.ClientSession) -> None:
        """Scrape every instance at once."""
        await asyncio.gather(*(self._sample(session, stats) for stats in self.instances.values()))

    async def _sample(self, session: aiohttp.ClientSession, stats: InstanceStats) -> None:
        t = time.perf_counter() - self._started_at
        try:
            async with session.get(metrics_endpoint(stats.url)) as response:
                response.raise_for_status()
                text = await response.text()
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if stats.failures == 0:
                log.warning("cannot read %s/metrics: %s", stats.url, exc)
            stats.failures += 1
            return
        stats.role = stats.role or role_of(text)
        stats.add(t, parse_metrics(text))
