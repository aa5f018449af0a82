"""Sans-I/O registry of runners: who is alive, and which streams each one owns.

Runners heartbeat every ``heartbeat_interval_s`` with the ids of the streams they generate, a runner of many streams
listing them over several heartbeats in turn (``wire/pages.py``): each page is kept as last heard.
A runner not heard from for ``stale_after_s`` is *suspect* (:meth:`stale`): it no longer counts
as live (:meth:`live`, ``/readyz``) but still as registered (:meth:`registered`, admission), and the
gateway asks it directly whether it is alive.  Only when that fails is it
declared lost, once, and :meth:`forget` hands back every stream it may still have owned:
those in its last heartbeat plus those dispatched to it since (a runner that took a stream before this gateway heard
from it at all is watched from that dispatch on).  Their readers must get a
``runner_lost`` error, never silence.  A heartbeat (or the answer to the check) in between
makes it live again.

Each heartbeat names the models its runner serves.  The registry knows which runners serve which model, and
remembers every model a runner ever announced (at most ``max_known_models``, the least recently announced
forgotten first): a request for a model it knows whose runners are all gone is ``unavailable``, one for a model
it never heard of is ``model_not_found``.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from tokenrelay.wire.messages import RunnerHeartbeat

MAX_KNOWN_MODELS = 1024
"""Models remembered as announced once; past it the least recently announced is forgotten (then ``model_not_found``
rather than ``unavailable`` while no runner serves it), so a stream of made-up names cannot grow the registry."""


DEFAULT_HEARTBEAT_INTERVAL_S = 1.0
"""The interval between a runner's heartbeats assumed until two of them were heard."""


@dataclass
class _Runner:
    beat: RunnerHeartbeat
    seen: float
    streams: set[str] = field(default_factory=set)
    """Every stream its heartbeats' pages list (as each page was last heard)."""
    listed: dict[tuple[int, int], tuple[float, tuple[str, ...]]] = field(default_factory=dict)
    """(pages, page) -> when that page was last heard, and the streams it listed (``wire/pages.py``)."""
    interval_s: float = DEFAULT_HEARTBEAT_INTERVAL_S
    """The last interval between two of its heartbeats."""
    dispatched: dict[str, float] = field(default_factory=dict)


class RunnerRegistry:
    """What this gateway knows of the runners, fed with heartbeats and dispatches."""

    def __init__(self, *, stale_after_s: float, max_known_models: int = MAX_KNOWN_MODELS) -> None:
        self._stale_after_s = stale_after_s
        self._max_known_models = max_known_models
        self._runners: dict[str, _Runner] = {}
        self._unheard: dict[str, dict[str, float]] = {}
        """Runners that took a stream before this gateway heard a heartbeat of theirs (jobs go to a queue group):
        the streams each took and when.  One that stays unheard for ``stale_after_s`` is checked as a silent one."""
        self._known: OrderedDict[str, None] = OrderedDict()
        """Every model a runner announced, the most recently announced last."""

    def on_heartbeat(self, beat: RunnerHeartbeat, now: float) -> None:
        """Record a heartbeat received at ``now`` (monotonic seconds)."""
        runner = self._runners.get(beat.runner_id)
        if runner is None:
            runner = self._runners[beat.runner_id] = _Runner(beat, now)
            runner.dispatched.update(self._unheard.pop(beat.runner_id, {}))
        elif now > runner.seen:
            runner.interval_s = min(now - runner.seen, self._stale_after_s)
        # A runner that says it is leaving is as good as silent: it is pinged at the next check, not in a while.
        runner.beat, runner.seen = beat, now - self._stale_after_s if beat.leaving else now
        for model in beat.served_models():
            self._known[model] = None
            self._known.move_to_end(model)
        while len(self._known) > self._max_known_models:
            self._known.popitem(last=False)
        # Each page as last heard, for one cycle through the pages (and the staleness margin) at most.
        cycle_s = self._stale_after_s + beat.pages * runner.interval_s
        runner.listed[(beat.pages, beat.page)] = (now, beat.streams)
        runner.listed = {key: heard for key, heard in runner.listed.items() if heard[0] > now - cycle_s}
        runner.streams = {stream_id for _, listed in runner.listed.values() for stream_id in listed}
        # A dispatch older than a cycle of heartbeats is either listed in one or already finished.
        runner.dispatched = {sid: at for sid, at in runner.dispatched.items() if at > now - cycle_s}
        for stream_id in beat.streams:
            runner.dispatched.pop(stream_id, None)

    def on_dispatch(self, stream_id: str, runner_id: str, now: float) -> None:
        """A runner accepted a stream at ``now``; it owns it until a heartbeat says otherwise."""
        runner = self._runners.get(runner_id)
        if runner is not None:
            runner.dispatched[stream_id] = now
        else:  # not heard from yet: watched all the same, or a runner that dies now would leave its stream hanging
            self._unheard.setdefault(runner_id, {})[stream_id] = now

    def holds(self, stream_id: str) -> bool:
        """Whether a runner listed ``stream_id`` in its last heartbeat or accepted it since."""
        return any(stream_id in r.streams or stream_id in r.dispatched for r in self._runners.values()) or any(
            stream_id in taken for taken in self._unheard.values()
        )

    def live(self, now: float) -> list[RunnerHeartbeat]:
        """Last heartbeats of the runners heard from within ``stale_after_s``."""
        return [r.beat for r in self._runners.values() if now - r.seen < self._stale_after_s]

    def registered(self) -> list[RunnerHeartbeat]:
        """Last heartbeats of every runner not declared lost: the live and the suspect ones."""
        return [r.beat for r in self._runners.values()]

    def registered_models(self) -> set[str]:
        """The models served by the runners not declared lost (live or suspect)."""
        return {model for r in self._runners.values() for model in r.beat.served_models()}

    def live_models(self, now: float) -> list[str]:
        """The models served by the runners heard from within ``stale_after_s``, each once, in the order heard."""
        return list(dict.fromkeys(model for beat in self.live(now) for model in beat.served_models()))

    def knows_model(self, model: str) -> bool:
        """Whether a runner ever announced ``model`` (among the ``max_known_models`` last announced)."""
        return model in self._known

    def stale(self, now: float) -> list[str]:
        """Runners not heard from within ``stale_after_s`` (suspect; still registered)."""
        stale_s = self._stale_after_s
        silent = [rid for rid, r in self._runners.items() if now - r.seen >= stale_s]
        return silent + [rid for rid, taken in self._unheard.items() if now - min(taken.values()) >= stale_s]

    def forget(self, runner_id: str, now: float) -> set[str] | None:
        """Declare a stale runner lost: drop it and return the streams it may still have owned.

        ``None`` when it is not stale at ``now`` (heard from since it was suspected) or not known.
        """
        runner = self._runners.get(runner_id)
        if runner is None:
            taken = self._unheard.get(runner_id)
            if taken is None or now - min(taken.values()) < self._stale_after_s:
                return None
            del self._unheard[runner_id]
            return set(taken)
        if now - runner.seen < self._stale_after_s:
            return None
        del self._runners[runner_id]
        return runner.streams | set(runner.dispatched)
