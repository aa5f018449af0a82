"""Spec of the shared decode steps: one timer per step releases every token due in it, never early.

The tests that wait on the loop's clock run on a loop whose clock is virtual: when nothing is ready to run it jumps
to its next timer instead of sleeping, so they take no real time and see the exact times the code waits for.
"""

from __future__ import annotations

import asyncio
import selectors
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from tests.helpers import run_on_loop
from tokenrelay.runner.engines import GenerationRequest
from tokenrelay.runner.engines.steps import StepClock, step_of
from tokenrelay.runner.engines.synthetic import SyntheticEngine, prompt_text, synthetic_tokens
from tokenrelay.runtime.config import SyntheticConfig
from tokenrelay.wire.content import ChatMessage

STEP_S = 0.05
VIRTUAL_START_S = 1000.0
"""Where a virtual clock starts (any time will do; not 0, so a due time in the past is a positive one)."""
MAX_LOOP_TURNS = 100
"""Turns of the loop a test lets pass for tasks it created to reach their first wait (one is enough)."""


class _JumpingSelector(selectors.DefaultSelector):
    """Never blocks: a wait for the next timer moves the loop's virtual clock to that timer instead."""

    def __init__(self, loop: VirtualClockLoop) -> None:
        super().__init__()
        self._loop = loop

    def select(self, timeout: float | None = None) -> list[tuple[selectors.SelectorKey, int]]:
        if timeout is None:  # nothing scheduled and nothing ready: a real loop would wait forever here
            raise RuntimeError("the test waits for something that nothing will ever do")
        self._loop.advance(timeout)
        return super().select(0)


class VirtualClockLoop(asyncio.SelectorEventLoop):
    """An event loop whose ``time()`` is virtual and moves only when the loop would otherwise sleep."""

    def __init__(self) -> None:
        self._now = VIRTUAL_START_S
        super().__init__(selector=_JumpingSelector(self))

    def time(self) -> float:
        return self._now

    def advance(self, seconds: float) -> None:
        """Move the clock ``seconds`` forward."""
        self._now += max(0.0, seconds)


def on_virtual_clock(test: Callable[[], Coroutine[Any, Any, None]]) -> Callable[[], None]:
    """Run an async test on a fresh :class:`VirtualClockLoop`."""

    def run() -> None:
        run_on_loop(VirtualClockLoop, test())

    run.__doc__ = test.__doc__
    return run


async def until_waiting(clock: StepClock, tokens: int) -> None:
    """Let the loop turn until ``tokens`` tokens wait on ``clock`` (a task created now starts on the next turn)."""
    for _ in range(MAX_LOOP_TURNS):
        if clock.waiting >= tokens:
            return
        await asyncio.sleep(0)  # one turn of the loop: no time passes
    raise AssertionError(f"{clock.waiting} tokens wait on the step clock after {MAX_LOOP_TURNS} turns, not {tokens}")


def test_a_due_time_on_a_boundary_belongs_to_that_step() -> None:
    assert step_of(0.10, STEP_S) == 2
    assert step_of(0.0, STEP_S) == 0


def test_a_due_time_past_a_boundary_belongs_to_the_next_step() -> None:
    assert step_of(0.1001, STEP_S) == 3
    assert step_of(0.0999, STEP_S) == 2


def test_float_noise_above_a_boundary_does_not_push_a_token_a_whole_step_late() -> None:
    due_s = 0.1 * 3  # 0.30000000000000004
    assert step_of(due_s, 0.1) == 3


@pytest.mark.parametrize("step_s", [0.0, -0.01])
def test_step_of_needs_a_positive_step(step_s: float) -> None:
    with pytest.raises(ValueError, match="step_s"):
        step_of(1.0, step_s)


def test_a_negative_step_is_refused() -> None:
    with pytest.raises(ValueError, match="step_s"):
        StepClock(-0.001)


def _next_boundary(loop: asyncio.AbstractEventLoop, steps_ahead: int) -> float:
    return (step_of(loop.time(), STEP_S) + steps_ahead) * STEP_S


@on_virtual_clock
async def test_tokens_due_in_the_same_step_share_one_timer() -> None:
    loop = asyncio.get_running_loop()
    clock = StepClock(STEP_S)
    boundary = _next_boundary(loop, 2)
    waiters = [asyncio.create_task(clock.until(boundary - fraction * STEP_S)) for fraction in (0.1, 0.5, 0.9)]
    await until_waiting(clock, 3)
    assert clock.steps_pending == 1
    await asyncio.gather(*waiters)
    assert loop.time() == pytest.approx(boundary)  # all three at the step's boundary
    assert clock.steps_pending == 0


@on_virtual_clock
async def test_tokens_due_in_different_steps_wait_for_a_step_each() -> None:
    loop = asyncio.get_running_loop()
    clock = StepClock(STEP_S)
    boundary = _next_boundary(loop, 2)
    waiters = [asyncio.create_task(clock.until(due)) for due in (boundary, boundary + STEP_S)]
    await until_waiting(clock, 2)
    assert clock.steps_pending == 2
    await waiters[0]
    assert loop.time() == pytest.approx(boundary)
    assert not waiters[1].done()
    await waiters[1]
    assert loop.time() == pytest.approx(boundary + STEP_S)


@on_virtual_clock
async def test_a_token_is_never_released_before_it_is_due() -> None:
    loop = asyncio.get_running_loop()
    clock = StepClock(STEP_S)
    due_s = loop.time() + 0.07
    await clock.until(due_s)
    assert loop.time() >= due_s
    assert loop.time() == pytest.approx(step_of(due_s, STEP_S) * STEP_S)  # at the first step boundary after it


@on_virtual_clock
async def test_cancelling_one_waiter_leaves_the_others_of_its_step_waiting_normally() -> None:
    loop = asyncio.get_running_loop()
    clock = StepClock(STEP_S)
    boundary = _next_boundary(loop, 2)
    cancelled = asyncio.create_task(clock.until(boundary))
    kept = asyncio.create_task(clock.until(boundary))
    await until_waiting(clock, 2)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await kept  # released by the step's timer, not cancelled with its neighbour
    assert kept.done() and not kept.cancelled()
    assert loop.time() == pytest.approx(boundary)


@on_virtual_clock
async def test_a_token_already_due_arms_no_timer_but_still_lets_a_cancel_land() -> None:
    loop = asyncio.get_running_loop()
    clock = StepClock(STEP_S)
    await clock.until(loop.time() - 1.0)
    assert clock.steps_pending == 0
    task = asyncio.create_task(clock.until(loop.time() - 1.0))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@on_virtual_clock
async def test_a_zero_step_gives_every_token_its_own_time() -> None:
    loop = asyncio.get_running_loop()
    clock = StepClock(0.0)
    due_s = loop.time() + 0.02
    await clock.until(due_s)
    assert loop.time() == pytest.approx(due_s)
    assert clock.steps_pending == 0


@on_virtual_clock
async def test_a_stepped_synthetic_engine_streams_the_same_tokens() -> None:
    messages = (ChatMessage(role="user", content="steps"),)
    engine = SyntheticEngine(SyntheticConfig(ttft_ms=0, tokens_per_s=1000, length_tokens=30, step_ms=5))
    request = GenerationRequest(stream_id="s", model="synthetic", messages=messages, max_tokens=30)
    streamed = [token async for token in engine.stream(request)]
    assert streamed == synthetic_tokens(prompt_text(messages), max_tokens=30, length_tokens=30)


@on_virtual_clock
async def test_the_first_token_does_not_wait_for_a_step() -> None:
    # A step of 60 s: a first token that waited for a boundary would come up to 60 s late.
    engine = SyntheticEngine(SyntheticConfig(ttft_ms=0, tokens_per_s=1000, length_tokens=5, step_ms=60_000))
    request = GenerationRequest(
        stream_id="s", model="synthetic", messages=(ChatMessage(role="user", content="x"),), max_tokens=5
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    tokens = engine.stream(request)
    first = await anext(tokens)
    assert loop.time() == started
    assert first == synthetic_tokens("user: x", max_tokens=5, length_tokens=5)[0]
    await tokens.aclose()  # type: ignore[attr-defined]


@on_virtual_clock
async def test_a_first_token_of_no_prefill_time_comes_without_yielding_to_the_loop() -> None:
    # So the runner publishes it in the same write as the stream's start event: nothing else runs in between.
    engine = SyntheticEngine(SyntheticConfig(ttft_ms=0, tokens_per_s=1000, length_tokens=5, step_ms=5))
    request = GenerationRequest(
        stream_id="s", model="synthetic", messages=(ChatMessage(role="user", content="x"),), max_tokens=5
    )
    ran: list[bool] = []
    asyncio.get_running_loop().call_soon(ran.append, True)
    tokens = engine.stream(request)
    await anext(tokens)
    assert ran == []
    await tokens.aclose()  # type: ignore[attr-defined]


@on_virtual_clock
async def test_a_first_token_with_a_prefill_time_waits_for_it() -> None:
    engine = SyntheticEngine(SyntheticConfig(ttft_ms=50, tokens_per_s=1000, length_tokens=5, step_ms=5))
    request = GenerationRequest(
        stream_id="s", model="synthetic", messages=(ChatMessage(role="user", content="x"),), max_tokens=5
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    tokens = engine.stream(request)
    await anext(tokens)
    assert loop.time() - started == pytest.approx(0.050)
    await tokens.aclose()  # type: ignore[attr-defined]
