"""A request larger than one NATS message leaves its whole encoding in the payload store and travels with
``payload`` naming it and no messages; its reader takes the messages back, and content that cannot be read is
``unavailable``."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any, cast

import pytest
from nats.js.errors import ObjectNotFoundError, ServiceUnavailableError
from nats.js.object_store import ObjectStore

from tokenrelay.runtime.payloads import (
    PayloadStore,
    PayloadUnavailable,
    carry,
    fits,
    job_payload_name,
    start_payload_name,
    unpack,
)
from tokenrelay.wire import codec
from tokenrelay.wire.content import ChatMessage, ContentPart
from tokenrelay.wire.errors import ErrorCode
from tokenrelay.wire.messages import JobRequest, StartRequest

STREAM_ID = "0" * 32
IMAGE = "data:image/png;base64," + "A" * 40_000


@dataclass
class FakeObjects:
    """The object store calls :class:`PayloadStore` makes, in memory; ``failing`` raises what a broker would."""

    objects: dict[str, bytes] = field(default_factory=dict)
    failing: bool = False

    async def put(self, name: str, data: bytes) -> None:
        self._check()
        self.objects[name] = data

    async def get(self, name: str) -> Any:
        self._check()
        if name not in self.objects:
            raise ObjectNotFoundError
        return ObjectStore.ObjectResult(info=cast(Any, None), data=self.objects[name])

    async def delete(self, name: str) -> None:
        self._check()
        if self.objects.pop(name, None) is None:
            raise ObjectNotFoundError

    def _check(self) -> None:
        if self.failing:
            raise ServiceUnavailableError


def store_of(objects: FakeObjects) -> PayloadStore:
    return PayloadStore(cast(ObjectStore, objects))


def job(*, image: str = IMAGE) -> JobRequest:
    content = (ContentPart(type="text", text="what is this?"), ContentPart(type="image_url", image_url=image))
    return JobRequest(
        stream_id=STREAM_ID, epoch="e1", gateway_id="gateway-1", model="m",
        messages=(ChatMessage(role="user", content=content),), max_tokens=5, created=1, owner="tenant",
        params={"temperature": 0.5},
    )  # fmt: skip


def test_a_message_fits_when_it_and_its_headroom_are_within_max_payload() -> None:
    assert fits(1000, max_payload_bytes=1024, headroom_bytes=24)
    assert not fits(1001, max_payload_bytes=1024, headroom_bytes=24)


def test_object_names_tell_jobs_from_start_requests_and_starts_never_repeat() -> None:
    assert job_payload_name(STREAM_ID) == f"job-{STREAM_ID}"
    assert start_payload_name().startswith("start-") and start_payload_name() != start_payload_name()


async def test_a_job_that_fits_travels_as_it_is_and_stores_nothing() -> None:
    objects = FakeObjects()
    sent = await carry(job(), store_of(objects), name="job-x", max_payload_bytes=1 << 20)
    assert sent == job() and objects.objects == {}


async def test_a_job_over_max_payload_travels_without_messages_and_its_reader_gets_them_back_whole() -> None:
    objects, original = FakeObjects(), job()
    sent = await carry(original, store_of(objects), name="job-x", max_payload_bytes=10_000, headroom_bytes=1024)
    assert (sent.messages, sent.payload) == ((), "job-x")
    assert len(codec.encode(sent)) < 10_000 - 1024
    assert codec.decode_as(codec.encode(sent), JobRequest) == sent  # the reference survives the wire
    assert await unpack(sent, store_of(objects)) == original


async def test_a_start_request_over_max_payload_travels_the_same_way() -> None:
    objects = FakeObjects()
    start = StartRequest(messages=job().messages, max_tokens=5, model="m", owner="tenant")
    sent = await carry(start, store_of(objects), name="start-x", max_payload_bytes=10_000)
    assert (sent.messages, sent.payload, sent.owner) == ((), "start-x", "tenant")
    assert await unpack(sent, store_of(objects)) == start


async def test_without_a_store_a_large_message_is_left_whole_for_the_callers_size_check() -> None:
    assert await carry(job(), None, name="job-x", max_payload_bytes=10_000) == job()


async def test_the_messages_come_from_the_object_and_everything_else_from_the_message_itself() -> None:
    objects = FakeObjects()
    sent = await carry(job(), store_of(objects), name="job-x", max_payload_bytes=10_000)
    forged = job(image="data:image/png;base64,AAAA")
    objects.objects["job-x"] = codec.encode(replace(forged, owner="someone else"))
    unpacked = await unpack(sent, store_of(objects))
    assert unpacked.owner == "tenant" and unpacked.messages == forged.messages


async def test_a_message_whose_content_is_gone_is_unavailable_naming_the_object() -> None:
    sent = await carry(job(), store_of(FakeObjects()), name="job-x", max_payload_bytes=10_000)
    with pytest.raises(PayloadUnavailable, match="job-x") as gone:
        await unpack(sent, store_of(FakeObjects()))
    assert (gone.value.code, gone.value.http_status) == (ErrorCode.UNAVAILABLE, 503)


async def test_a_message_with_content_but_no_store_to_read_it_from_is_unavailable() -> None:
    sent = await carry(job(), store_of(FakeObjects()), name="job-x", max_payload_bytes=10_000)
    with pytest.raises(PayloadUnavailable):
        await unpack(sent, None)


async def test_an_object_that_is_not_such_a_message_is_unavailable() -> None:
    objects = FakeObjects()
    sent = await carry(job(), store_of(objects), name="job-x", max_payload_bytes=10_000)
    objects.objects["job-x"] = b'{"type": "start_request"}'
    with pytest.raises(PayloadUnavailable, match="malformed"):
        await unpack(sent, store_of(objects))


async def test_a_broker_failure_storing_or_reading_is_unavailable() -> None:
    objects = FakeObjects(failing=True)
    with pytest.raises(PayloadUnavailable):
        await carry(job(), store_of(objects), name="job-x", max_payload_bytes=10_000)
    with pytest.raises(PayloadUnavailable):
        await store_of(objects).get("job-x")


async def test_deleting_an_object_already_gone_or_on_a_failing_broker_is_left_to_the_ttl() -> None:
    objects = FakeObjects(objects={"job-x": b"x"})
    await store_of(objects).delete("job-x")
    await store_of(objects).delete("job-x")  # gone already: nothing raised
    objects.failing = True
    await store_of(objects).delete("job-y")  # logged; the bucket's TTL removes it
    assert objects.objects == {}


async def test_a_raw_prompt_over_max_payload_travels_through_the_store_too() -> None:
    objects = FakeObjects()
    original = replace(job(), messages=(), prompt="def f():\n" + "    x = 1\n" * 5_000)
    sent = await carry(original, store_of(objects), name="job-p", max_payload_bytes=10_000, headroom_bytes=1024)
    assert (sent.prompt, sent.messages, sent.payload) == (None, (), "job-p")
    assert len(codec.encode(sent)) < 10_000 - 1024
    assert await unpack(sent, store_of(objects)) == original
