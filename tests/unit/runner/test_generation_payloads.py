"""Spec of a generation whose job left its messages in the payload store: the engine gets them whole, and a job
whose content cannot be read ends with an ``unavailable`` error event instead of generating from nothing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import cast

from nats.js.object_store import ObjectStore

from tests.unit.runner.test_generation import HOLD_S, FakeBroker
from tests.unit.runtime.test_payloads import FakeObjects, job
from tokenrelay.runner.engines import GenerationRequest, Piece
from tokenrelay.runner.generation import Generation
from tokenrelay.runner.metrics import RunnerMetrics
from tokenrelay.runner.pace import PublishPace
from tokenrelay.runtime.payloads import PayloadStore, carry
from tokenrelay.wire.content import ChatMessage
from tokenrelay.wire.messages import JobRequest, StreamEnd, StreamError, StreamEvent, StreamRecord


class EchoEngine:
    """Answers one token and remembers the messages it was given."""

    name = "echo"
    model = "m"

    def __init__(self) -> None:
        self.messages: tuple[ChatMessage, ...] | None = None

    async def stream(self, request: GenerationRequest) -> AsyncIterator[Piece]:
        self.messages = request.messages
        yield "seen"

    async def aclose(self) -> None:
        """Nothing to release."""


async def generate(sent: JobRequest, objects: FakeObjects, engine: EchoEngine) -> list[StreamEvent]:
    broker = FakeBroker()

    async def write_record(record: StreamRecord) -> None:
        pass

    generation = Generation(
        sent, engine=engine, nc=broker, runner_id="r1", pace=PublishPace(HOLD_S), metrics=RunnerMetrics(),  # type: ignore[arg-type]
        write_record=write_record, payloads=PayloadStore(cast(ObjectStore, objects)),
    )  # fmt: skip
    await generation.start()
    await generation.records_saved()
    return broker.events()


async def test_the_engine_gets_the_messages_of_a_job_whose_content_was_in_the_payload_store() -> None:
    objects, engine = FakeObjects(), EchoEngine()
    sent = await carry(job(), PayloadStore(cast(ObjectStore, objects)), name="job-x", max_payload_bytes=10_000)
    assert sent.messages == ()
    events = await generate(sent, objects, engine)
    assert engine.messages == job().messages
    assert isinstance(events[-1], StreamEnd) and events[-1].finish_reason == "stop"


async def test_a_job_whose_content_is_gone_ends_with_an_unavailable_error_and_generates_nothing() -> None:
    objects, engine = FakeObjects(), EchoEngine()
    sent = await carry(job(), PayloadStore(cast(ObjectStore, objects)), name="job-x", max_payload_bytes=10_000)
    objects.objects.clear()  # expired
    events = await generate(sent, objects, engine)
    assert engine.messages is None
    assert isinstance(events[-1], StreamError) and events[-1].code == "unavailable" and "job-x" in events[-1].message
    assert events[-1].tokens == 0
