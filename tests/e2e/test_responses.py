"""OpenAI's Responses API through the unmodified ``openai`` SDK: streamed, whole and background responses, their
retrieval and exact resume by ``starting_after``, cancel (the runner halts), delete, ``previous_response_id``,
``store: false``, the per-key cap, and bad input with exact codes; a background response outlives the streamer that
started it and the unread grace.  Tool calls and reasoning come from an ``openai``-engine runner in front of a fake
upstream, which shows what it was asked."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from openai.types.responses import FunctionToolParam, ResponseStreamEvent

from tokenrelay.testing.fake_openai import Answer, FakeUpstream, served_in_thread
from tokenrelay.testing.http import metric
from tokenrelay.testing.procs import NatsServer, System, nats_server, stop_process, system
from tokenrelay.testing.synthetic import synthetic_args

ACME_KEY = "tr-acme-responses-0123456789"
GLOBEX_KEY = "tr-globex-responses-987654321"
INITECH_KEY = "tr-initech-responses-55555555"
NATURAL_TOKENS = 150
"""Every synthetic answer ends by itself after this many tokens (at 100 a second: 1.5 s)."""
BACKGROUND_CAP = 12
"""More than the background responses the other specs make with one key; the cap spec fills it with a key of its own."""
UNREAD_GRACE_S = 0.3


@pytest.fixture(scope="module")
def sut(nats: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    keys = tmp_path_factory.mktemp("responses") / "api-keys"
    keys.write_text(f"acme {ACME_KEY}\nglobex {GLOBEX_KEY}\ninitech {INITECH_KEY}\n")
    auth = ["--api-keys-file", str(keys)]
    streamer = [*auth, "--disconnect-grace-s", "0.2", "--max-background-responses-per-key", str(BACKGROUND_CAP)]
    gateway = [*auth, "--unread-grace-s", str(UNREAD_GRACE_S)]
    runner = synthetic_args(tokens_per_s=100, length_tokens=NATURAL_TOKENS)
    with system(nats.url, runner_args=runner, streamer_args=streamer, gateway_args=gateway) as running:
        yield running


def client(sut: System, key: str = ACME_KEY, *, streamer: int | None = None) -> openai.AsyncOpenAI:
    url = sut.streamer_url if streamer is None else sut.streamers[streamer].url
    return openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def deltas(events: list[ResponseStreamEvent]) -> str:
    return "".join(e.delta for e in events if e.type == "response.output_text.delta")


async def finished(sdk: openai.AsyncOpenAI, response_id: str, timeout_s: float = 30) -> Any:
    """Poll ``retrieve`` until the response is no longer queued or in progress."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        response = await sdk.responses.retrieve(response_id)
        if response.status not in ("queued", "in_progress"):
            return response
        assert loop.time() < deadline, f"{response_id} still {response.status}"
        await asyncio.sleep(0.05)


async def test_a_streamed_response_sends_the_events_in_order_and_the_final_text_equals_the_deltas(sut: System) -> None:
    stream = await client(sut).responses.create(model="synthetic", input="hello", stream=True, max_output_tokens=12)
    events = [event async for event in stream]
    types = [event.type for event in events]
    assert types[:4] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
    ]  # fmt: skip
    assert types[-4:] == [
        "response.output_text.done", "response.content_part.done", "response.output_item.done", "response.incomplete",
    ]  # fmt: skip
    numbers = [event.sequence_number for event in events]
    assert numbers == sorted(set(numbers)) and numbers[:2] == [0, 1]
    final = events[-1].response  # type: ignore[union-attr]
    assert final.status == "incomplete" and final.incomplete_details is not None
    assert final.incomplete_details.reason == "max_output_tokens"
    assert final.output_text == deltas(events) != ""
    assert final.usage is not None and final.usage.output_tokens == 12
    assert final.id.startswith("resp_")


async def test_the_stream_helper_accepts_the_event_order_and_gives_the_completed_response(sut: System) -> None:
    async with client(sut).responses.stream(model="synthetic", input="a whole answer", max_output_tokens=500) as s:
        texts = [event.delta async for event in s if event.type == "response.output_text.delta"]
        final = await s.get_final_response()
    assert final.status == "completed"
    assert final.output_text == "".join(texts) != ""
    assert final.usage is not None and final.usage.output_tokens == NATURAL_TOKENS


async def test_a_whole_response_is_retrievable_and_chains_with_previous_response_id(sut: System) -> None:
    sdk = client(sut)
    first = await sdk.responses.create(model="synthetic", input="first turn", max_output_tokens=6)
    assert first.status == "incomplete" and first.output_text
    again = await sdk.responses.retrieve(first.id)
    assert again.output_text == first.output_text and again.status == "incomplete"
    second = await sdk.responses.create(
        model="synthetic", input="second turn", previous_response_id=first.id, max_output_tokens=6
    )
    assert second.previous_response_id == first.id
    # The conversation grew by the first turn and its answer: the prompt is longer than the second input alone.
    alone = await sdk.responses.create(model="synthetic", input="second turn", max_output_tokens=6)
    assert second.usage is not None and alone.usage is not None
    assert second.usage.input_tokens > alone.usage.input_tokens


async def test_input_items_list_the_requests_own_input_newest_first(sut: System) -> None:
    sdk = client(sut)
    first = await sdk.responses.create(model="synthetic", input="earlier turn", max_output_tokens=3)
    second = await sdk.responses.create(
        model="synthetic", previous_response_id=first.id, max_output_tokens=3, instructions="Be brief.",
        input=[
            {"role": "user", "content": "one"}, {"role": "user", "content": [{"type": "input_text", "text": "two"}]},
        ],
    )  # fmt: skip
    listed = await sdk.responses.input_items.list(second.id)
    texts = [item.content[0].text for item in listed.data if item.type == "message"]  # type: ignore[union-attr]
    assert texts == ["two", "one"]  # its own input only, newest first; instructions are not an item
    ascending = await sdk.responses.input_items.list(second.id, order="asc", limit=1)
    assert [item.id for item in ascending.data] == [listed.data[-1].id] and ascending.has_more


async def test_a_background_response_is_read_in_part_then_resumed_after_a_sequence_number_exactly(
    sut: System,
) -> None:
    sdk = client(sut)
    created = await sdk.responses.create(model="synthetic", input="background", background=True, max_output_tokens=60)
    assert created.status == "queued" and created.background
    first: list[ResponseStreamEvent] = []
    stream = await sdk.responses.retrieve(created.id, stream=True)
    async for event in stream:
        first.append(event)
        if event.type == "response.output_text.delta" and len(deltas(first)) > 10:
            break
    await stream.close()
    after = first[-1].sequence_number
    rest = [event async for event in await sdk.responses.retrieve(created.id, stream=True, starting_after=after)]
    assert rest[0].sequence_number > after
    final = rest[-1]
    assert final.type == "response.incomplete"
    assert deltas(first) + deltas(rest) == final.response.output_text
    # Once finished, the same resume gives the same events.
    replay = [event async for event in await sdk.responses.retrieve(created.id, stream=True, starting_after=after)]
    assert [(e.sequence_number, e.type) for e in replay] == [(e.sequence_number, e.type) for e in rest]


async def test_starting_after_beyond_what_a_running_response_made_so_far_waits_for_those_events(sut: System) -> None:
    sdk = client(sut)
    created = await sdk.responses.create(model="synthetic", input="wait for it", background=True, max_output_tokens=80)
    # At 100 tokens a second, event 60 is about half a second away when this asks for what follows it.
    later = [event async for event in await sdk.responses.retrieve(created.id, stream=True, starting_after=60)]
    whole = [event async for event in await sdk.responses.retrieve(created.id, stream=True)]
    assert later[0].sequence_number > 60
    assert [(e.sequence_number, e.type) for e in later] == [
        (e.sequence_number, e.type) for e in whole if e.sequence_number > 60
    ]
    assert later[-1].type == "response.incomplete"


async def test_a_background_response_with_no_reader_past_the_unread_grace_still_completes(sut: System) -> None:
    sdk = client(sut)
    created = await sdk.responses.create(
        model="synthetic", input="nobody reads", background=True, max_output_tokens=500
    )
    response = await finished(sdk, created.id)
    assert response.status == "completed"
    assert response.usage is not None and response.usage.output_tokens == NATURAL_TOKENS


async def test_a_background_stream_whose_client_leaves_still_completes(sut: System) -> None:
    sdk = client(sut)
    stream = await sdk.responses.create(
        model="synthetic", input="left early", background=True, stream=True, max_output_tokens=500
    )
    response_id = ""
    async for event in stream:
        if event.type == "response.created":
            response_id = event.response.id
        if event.type == "response.output_text.delta":
            break
    await stream.close()
    assert (await finished(sdk, response_id)).status == "completed"


async def test_cancel_halts_the_runner_and_the_response_stays_cancelled(sut: System) -> None:
    sdk, runner = client(sut), sut.runners[0].url
    before = await metric(runner, "tokenrelay_runner_cancellations_total", reason="client")
    created = await sdk.responses.create(model="synthetic", input="cancel me", background=True, max_output_tokens=500)
    stream = await sdk.responses.retrieve(created.id, stream=True)
    async for event in stream:
        if event.type == "response.output_text.delta":
            break
    await stream.close()
    cancelled = await sdk.responses.cancel(created.id)
    assert cancelled.status == "cancelled"
    assert cancelled.usage is not None and 0 < cancelled.usage.output_tokens < NATURAL_TOKENS
    assert await metric(runner, "tokenrelay_runner_cancellations_total", reason="client") == before + 1
    assert await metric(runner, "tokenrelay_runner_active_streams") == 0
    assert (await sdk.responses.cancel(created.id)).status == "cancelled"  # idempotent
    assert (await sdk.responses.retrieve(created.id)).status == "cancelled"


async def test_cancelling_a_response_that_is_not_background_is_a_bad_request(sut: System) -> None:
    sdk = client(sut)
    done = await sdk.responses.create(model="synthetic", input="foreground", max_output_tokens=3)
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.responses.cancel(done.id)
    assert caught.value.code == "bad_request"


async def test_a_deleted_response_is_gone(sut: System) -> None:
    sdk = client(sut)
    done = await sdk.responses.create(model="synthetic", input="delete me", max_output_tokens=3)
    await sdk.responses.delete(done.id)
    with pytest.raises(openai.NotFoundError) as caught:
        await sdk.responses.retrieve(done.id)
    assert caught.value.code == "not_found"


async def test_a_response_with_store_false_cannot_be_retrieved(sut: System) -> None:
    sdk = client(sut)
    done = await sdk.responses.create(model="synthetic", input="ephemeral", store=False, max_output_tokens=3)
    assert done.output_text
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(done.id)


async def test_another_keys_response_is_not_found_to_retrieve_or_cancel(sut: System) -> None:
    created = await client(sut).responses.create(model="synthetic", input="mine", background=True, max_output_tokens=3)
    other = client(sut, GLOBEX_KEY)
    for call in (other.responses.retrieve(created.id), other.responses.cancel(created.id)):
        with pytest.raises(openai.NotFoundError) as caught:
            await call
        assert caught.value.code == "not_found"
        assert caught.value.body == {  # OpenAI's error shape
            "message": f"no response with id '{created.id}'", "type": "not_found_error", "param": None,
            "code": "not_found",
        }  # fmt: skip


async def test_an_unknown_response_id_is_404_in_openais_shape(sut: System) -> None:
    for unknown in ("resp_" + "0" * 32, "nothing-like-an-id"):
        with pytest.raises(openai.NotFoundError) as caught:
            await client(sut).responses.retrieve(unknown)
        assert caught.value.body["type"] == "not_found_error"  # type: ignore[index]


async def test_starting_after_negative_or_past_the_end_is_a_bad_request(sut: System) -> None:
    sdk = client(sut)
    done = await sdk.responses.create(model="synthetic", input="short", max_output_tokens=3)
    events = [event async for event in await sdk.responses.retrieve(done.id, stream=True)]
    last = events[-1].sequence_number
    for bad in (-1, last, last + 100):
        with pytest.raises(openai.BadRequestError) as caught:
            await sdk.responses.retrieve(done.id, stream=True, starting_after=bad)
        assert caught.value.code == "bad_request"


async def test_an_unknown_input_item_type_is_a_bad_request_naming_it(sut: System) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await client(sut).responses.create(
            model="synthetic",
            input=[{"type": "teleport", "where": "mars"}],  # type: ignore[list-item]
        )
    assert caught.value.code == "bad_request"
    assert "input[0].type" in str(caught.value.message)


async def test_background_responses_past_the_keys_cap_are_rate_limited_until_one_is_deleted(sut: System) -> None:
    sdk = client(sut, INITECH_KEY)
    held = [
        await sdk.responses.create(model="synthetic", input="cap", background=True, max_output_tokens=2)
        for _ in range(BACKGROUND_CAP)
    ]
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk.responses.create(model="synthetic", input="one too many", background=True, max_output_tokens=2)
    assert caught.value.code == "rate_limited"
    await client(sut, ACME_KEY).responses.create(model="synthetic", input="other key", background=True)
    await sdk.responses.delete(held[0].id)
    again = await sdk.responses.create(model="synthetic", input="room again", background=True, max_output_tokens=2)
    assert again.status == "queued"


def test_a_background_response_outlives_the_streamer_that_started_it(nats: NatsServer) -> None:
    runner = synthetic_args(tokens_per_s=100, length_tokens=NATURAL_TOKENS)
    with system(nats.url, runner_args=runner, streamers=2) as two:

        async def main() -> None:
            created = await client(two, streamer=0).responses.create(
                model="synthetic", input="outlive", background=True, max_output_tokens=500
            )
            stop_process(two.streamers[0].process)
            survivor = client(two, streamer=1)
            events = [event async for event in await survivor.responses.retrieve(created.id, stream=True)]
            assert events[-1].type == "response.completed"
            assert deltas(events) == events[-1].response.output_text

        asyncio.run(main())


UPSTREAM_CALL = {"index": 0, "id": "call_r1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}
ARGUMENTS = '{"city": "Paris"}'


def upstream_answer(body: dict[str, object]) -> Answer:
    """Reasoning and a tool call, until the conversation carries the tool's output: then text."""
    messages = body["messages"]
    assert isinstance(messages, list)
    if any(message.get("role") == "tool" for message in messages):
        return Answer(words=["It", " is", " sunny."], finish_reason="stop")
    fragments = [UPSTREAM_CALL, {"index": 0, "function": {"arguments": ARGUMENTS}}]
    return Answer(reasoning=["Weather", " needed."], tool_fragments=fragments, finish_reason="tool_calls")


@pytest.fixture(scope="module")
def relayed() -> Iterator[tuple[System, FakeUpstream]]:
    with served_in_thread(FakeUpstream([], interval_s=0.001, usage_prompt_tokens=7, answer=upstream_answer)) as up:
        args = ["--engine", "openai", "--upstream-url", up.url, "--upstream-model", "weather-llm"]
        with nats_server() as own, system(own.url, runner_args=args) as running:
            yield running, up


TOOL: FunctionToolParam = {
    "type": "function", "name": "get_weather", "description": "The weather in a city.", "strict": False,
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}  # fmt: skip


async def test_reasoning_and_a_function_call_become_items_and_the_tool_output_continues_the_turn(
    relayed: tuple[System, FakeUpstream],
) -> None:
    sut, upstream = relayed
    sdk = client(sut)
    async with sdk.responses.stream(
        model="weather-llm",
        input="Weather in Paris?",
        tools=[TOOL],
        reasoning={"effort": "low"},
    ) as stream:
        types = [event.type async for event in stream]
        first = await stream.get_final_response()
    assert "response.reasoning_text.delta" in types and "response.function_call_arguments.done" in types
    reasoning, call = first.output
    assert reasoning.type == "reasoning" and reasoning.content is not None
    assert reasoning.content[0].text == "Weather needed."
    assert call.type == "function_call" and (call.call_id, call.name, call.arguments) == (
        "call_r1", "get_weather", ARGUMENTS,
    )  # fmt: skip
    asked = upstream.calls[-1].body
    assert asked["tools"] == [{"type": "function", "function": {k: v for k, v in TOOL.items() if k != "type"}}]
    assert asked["reasoning_effort"] == "low"
    second = await sdk.responses.create(
        model="weather-llm", previous_response_id=first.id, tools=[TOOL],
        input=[{"type": "function_call_output", "call_id": "call_r1", "output": '{"sky": "clear"}'}],
    )  # fmt: skip
    assert second.output_text == "It is sunny." and second.status == "completed"
    messages = upstream.calls[-1].body["messages"]
    assert isinstance(messages, list)
    assert [m["role"] for m in messages] == ["user", "assistant", "tool"]
    assert messages[1]["tool_calls"][0]["id"] == "call_r1"
    assert messages[2] == {"role": "tool", "content": '{"sky": "clear"}', "tool_call_id": "call_r1"}
