"""An interval that follows lateness between a configured base and a maximum (sans-I/O).

Used by the streamer's flush clock (how long a reader's writes are held while live events arrive late) and the
runner's publish pace (how long a stream's tokens are held while a streamer reports them late): on time, the
interval is the base; late, it is the lateness, at most the maximum.
"""

from __future__ import annotations


class AdaptiveInterval:
    """``interval_s`` between ``base_interval_s`` and ``max_interval_s`` (the same by default: a fixed interval)."""

    def __init__(self, base_interval_s: float, *, max_interval_s: float | None = None) -> None:
        max_interval_s = base_interval_s if max_interval_s is None else max_interval_s
        if base_interval_s < 0:
            raise ValueError("base_interval_s must be >= 0")
        if max_interval_s < base_interval_s:
            raise ValueError("max_interval_s must be >= base_interval_s")
        self.base_interval_s = base_interval_s
        self.max_interval_s = max_interval_s
        self.interval_s = base_interval_s
        """The interval now: between the base and the maximum."""

    @property
    def adapts(self) -> bool:
        """Whether the interval can grow (a maximum above the base)."""
        return self.max_interval_s > self.base_interval_s

    def follow(self, lag_s: float) -> None:
        """Set the interval to ``lag_s``, kept between the base and the maximum."""
        self.interval_s = min(self.max_interval_s, max(self.base_interval_s, lag_s))
