"""Spec of the shared decode steps: one timer per step releases every token due in it, never early."""

from __future__ import annotations

import asyncio

import pytest

from tokenrelay.runner.engines import GenerationRequest
from tokenrelay.runner.engines.steps import StepClock, step_of
from tokenrelay.runner.engines.synthetic import SyntheticEngine, prompt_text, synthetic_tokens
from tokenrelay.runtime.config import SyntheticConfig
from tokenrelay.wire.messages import ChatMessage

STEP_S = 0.05


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


async def test_tokens_due_in_the_same_step_share_one_timer() -> None:
    loop = asyncio.get_running_loop()
    clock = StepClock(STEP_S)
    boundary = _next_boundary(loop, 2)
    waiters = [asyncio.create_task(clock.until(boundary - fraction * STEP_S)) for fraction in (0.1, 0.5, 0.9)]
    await asyncio.sleep(0)
    assert clock.steps_pending == 1
    await asyncio.gather(*waiters)
    assert loop.time() >= boundary
    assert clock.steps_pending == 0


async def test_tokens_due_in_different_steps_wait_for_a_step_each() -> None:
    loop = asyncio.get_running_loop()
    clock = StepClock(STEP_S)
    boundary = _next_boundary(loop, 2)
    waiters = [asyncio.create_task(clock.until(due)) for due in (boundary, boundary + STEP_S)]
    await asyncio.sleep(0)
    assert clock.steps_pending == 2
    await asyncio.gather(*waiters)


async def test_a_token_is_never_released_before_it_is_due() -> None:
    loop = asyncio.get_running_loop()
    clock = StepClock(STEP_S)
    due_s = loop.time() + 0.07
    await clock.until(due_s)
    assert loop.time() >= due_s


async def test_cancelling_one_waiter_leaves_the_others_of_its_step_waiting_normally() -> None:
    loop = asyncio.get_running_loop()
    clock = StepClock(STEP_S)
    boundary = _next_boundary(loop, 2)
    cancelled = asyncio.create_task(clock.until(boundary))
    kept = asyncio.create_task(clock.until(boundary))
    await asyncio.sleep(0)
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled
    await kept  # released by the step's timer, not cancelled with its neighbour
    assert kept.done() and not kept.cancelled()


async def test_a_token_already_due_arms_no_timer_but_still_lets_a_cancel_land() -> None:
    loop = asyncio.get_running_loop()
    clock = StepClock(STEP_S)
    await clock.until(loop.time() - 1.0)
    assert clock.steps_pending == 0
    task = asyncio.create_task(clock.until(loop.time() - 1.0))
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_zero_step_gives_every_token_its_own_time() -> None:
    loop = asyncio.get_running_loop()
    clock = StepClock(0.0)
    due_s = loop.time() + 0.02
    await clock.until(due_s)
    assert loop.time() >= due_s
    assert clock.steps_pending == 0


async def test_a_stepped_synthetic_engine_streams_the_same_tokens() -> None:
    messages = (ChatMessage(role="user", content="steps"),)
    engine = SyntheticEngine(SyntheticConfig(ttft_ms=0, tokens_per_s=1000, length_tokens=30, step_ms=5))
    request = GenerationRequest(stream_id="s", model="synthetic", messages=messages, max_tokens=30)
    streamed = [token async for token in engine.stream(request)]
    assert streamed == synthetic_tokens(prompt_text(messages), max_tokens=30, length_tokens=30)


async def test_the_first_token_does_not_wait_for_a_step() -> None:
    # A step of 60 s: a first token that waited for a boundary would not arrive within the test's 5 s.
    engine = SyntheticEngine(SyntheticConfig(ttft_ms=0, tokens_per_s=1000, length_tokens=5, step_ms=60_000))
    request = GenerationRequest(
        stream_id="s", model="synthetic", messages=(ChatMessage(role="user", content="x"),), max_tokens=5
    )
    tokens = engine.stream(request)
    first = await asyncio.wait_for(anext(tokens), timeout=5)  # type: ignore[call-overload]
    assert first == synthetic_tokens("user: x", max_tokens=5, length_tokens=5)[0]
    await tokens.aclose()  # type: ignore[attr-defined]


async def test_a_first_token_of_no_prefill_time_comes_without_yielding_to_the_loop() -> None:
    # So the runner publishes it in the same write as the stream's start event: nothing else runs in between.
    engine = SyntheticEngine(SyntheticConfig(ttft_ms=0, tokens_per_s=1000, length_tokens=5, step_ms=5))
    request = GenerationRequest(
        stream_id="s", model="synthetic", messages=(ChatMessage(role="user", content="x"),), max_tokens=5
    )
    ran: list[bool] = []
    asyncio.get_running_loop().call_soon(ran.append, True)
    tokens = engine.stream(request)
    await anext(tokens)  # type: ignore[call-overload]
    assert ran == []
    await tokens.aclose()  # type: ignore[attr-defined]


async def test_a_first_token_with_a_prefill_time_waits_for_it() -> None:
    engine = SyntheticEngine(SyntheticConfig(ttft_ms=50, tokens_per_s=1000, length_tokens=5, step_ms=5))
    request = GenerationRequest(
        stream_id="s", model="synthetic", messages=(ChatMessage(role="user", content="x"),), max_tokens=5
    )
    loop = asyncio.get_running_loop()
    started = loop.time()
    tokens = engine.stream(request)
    await anext(tokens)  # type: ignore[call-overload]
    assert loop.time() - started >= 0.049  # the loop may fire a timer up to its clock resolution early
    await tokens.aclose()  # type: ignore[attr-defined]
