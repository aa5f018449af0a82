"""Spec of the wire's forward compatibility: a process decodes what a newer one sends, field by field and type by type.

A cluster is upgraded one process at a time, so every process meets messages from newer and older ones: unknown
fields are ignored, a missing ``v`` means protocol 1, and a message of an unknown ``type`` is a distinct error that
carries its tag (and its ``seq``, for a stream's event) instead of a generic malformed message.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import orjson
import pytest

from tests.unit.wire.test_codec import SAMPLES
from tokenrelay.wire import codec
from tokenrelay.wire import messages as m
from tokenrelay.wire.codec import MAX_TYPE_LABEL_CHARS, OTHER_TYPES, CodecError, UnknownMessageType, UnknownTypes

VERSIONED = (m.JobRequest, m.StreamStart, m.RunnerHeartbeat, m.StartRequest)
NEWER_FIELDS = {"future_scalar": 7, "future_object": {"nested": [1, "two", None]}, "future_list": [{"a": 1}]}


def _sample(cls: type[Any]) -> Any:
    return next(message for message in SAMPLES if type(message) is cls)


def _as_sent(message: m.Message, /, **changes: Any) -> dict[str, Any]:
    obj: dict[str, Any] = orjson.loads(codec.encode(message))
    obj.update(changes)
    return obj


def _without(obj: dict[str, Any], name: str) -> bytes:
    return orjson.dumps({k: v for k, v in obj.items() if k != name})


@pytest.mark.parametrize("message", SAMPLES, ids=lambda message: message.type)
def test_every_message_class_decodes_with_fields_a_newer_process_added(message: m.Message) -> None:
    newer = orjson.dumps(_as_sent(message, **NEWER_FIELDS))
    assert codec.decode(newer) == message
    assert codec.decode_as(newer, type(message)) == message


@pytest.mark.parametrize("message", [s for s in SAMPLES if isinstance(s, m.StreamEvent)], ids=lambda s: s.type)
def test_every_stream_event_decodes_as_an_event_with_fields_a_newer_process_added(message: m.StreamEvent) -> None:
    assert codec.decode_event(orjson.dumps(_as_sent(message, **NEWER_FIELDS))) == message


def test_protocol_version_is_the_direct_offer_protocol() -> None:
    assert m.PROTOCOL_VERSION == 4


@pytest.mark.parametrize("cls", VERSIONED, ids=lambda cls: cls.__name__)
def test_a_versioned_message_built_here_is_sent_with_this_protocol_version(cls: type[Any]) -> None:
    message = _sample(cls)
    assert message.v == m.PROTOCOL_VERSION
    assert orjson.loads(codec.encode(message))["v"] == m.PROTOCOL_VERSION


@pytest.mark.parametrize("cls", VERSIONED, ids=lambda cls: cls.__name__)
def test_a_versioned_message_without_v_comes_from_an_older_process_and_decodes_as_version_1(cls: type[Any]) -> None:
    decoded = codec.decode(_without(_as_sent(_sample(cls)), "v"))
    assert decoded == dataclasses.replace(_sample(cls), v=1)


@pytest.mark.parametrize("cls", VERSIONED, ids=lambda cls: cls.__name__)
def test_a_versioned_message_from_a_newer_process_keeps_its_version(cls: type[Any]) -> None:
    decoded = codec.decode(orjson.dumps(_as_sent(_sample(cls), v=m.PROTOCOL_VERSION + 1)))
    assert decoded == dataclasses.replace(_sample(cls), v=m.PROTOCOL_VERSION + 1)


def test_a_stream_start_without_v_decodes_as_a_stream_event_of_version_1() -> None:
    event = codec.decode_event(_without(_as_sent(_sample(m.StreamStart)), "v"))
    assert isinstance(event, m.StreamStart)
    assert event.v == 1


def test_a_version_that_is_not_an_int_is_malformed() -> None:
    with pytest.raises(CodecError, match="v"):
        codec.decode(orjson.dumps(_as_sent(_sample(m.JobRequest), v="2")))


def test_a_message_of_an_unknown_type_raises_unknown_message_type_with_its_tag() -> None:
    with pytest.raises(UnknownMessageType) as raised:
        codec.decode(b'{"type":"hologram","stream_id":"s"}')
    assert raised.value.tag == "hologram"
    assert raised.value.seq is None
    assert isinstance(raised.value, CodecError)  # callers that catch CodecError still catch it


def test_a_stream_event_of_an_unknown_type_carries_its_seq() -> None:
    with pytest.raises(UnknownMessageType) as raised:
        codec.decode_event(b'{"type":"citation","seq":5,"index":9}')
    assert (raised.value.tag, raised.value.seq) == ("citation", 5)


@pytest.mark.parametrize("seq", ["5", 5.0, True, None, [5]])
def test_an_unknown_message_with_a_seq_that_is_not_an_int_has_none(seq: Any) -> None:
    with pytest.raises(UnknownMessageType) as raised:
        codec.decode(orjson.dumps({"type": "citation", "seq": seq}))
    assert raised.value.seq is None


def test_decode_as_raises_unknown_message_type_for_an_unknown_type() -> None:
    with pytest.raises(UnknownMessageType):
        codec.decode_as(b'{"type":"runner_heartbeat_v3","runner_id":"r"}', m.RunnerHeartbeat)


@pytest.mark.parametrize("data", [b'{"seq":1}', b'{"type":null}', b'{"type":3}', b'{"type":["start"]}'])
def test_a_missing_or_non_string_type_is_malformed_not_unknown(data: bytes) -> None:
    with pytest.raises(CodecError) as raised:
        codec.decode(data)
    assert not isinstance(raised.value, UnknownMessageType)


def test_a_received_event_of_an_unknown_type_with_a_seq_is_a_placeholder_holding_that_seq() -> None:
    event = codec.decode_received_event(b'{"type":"citation","seq":5,"index":9,"url":"https://example.com"}')
    assert event == m.UnknownEvent(seq=5, tag="citation")


def test_a_received_event_of_an_unknown_type_without_a_seq_is_still_an_unknown_message_type() -> None:
    with pytest.raises(UnknownMessageType):
        codec.decode_received_event(b'{"type":"citation","index":9}')


@pytest.mark.parametrize("message", [s for s in SAMPLES if isinstance(s, m.StreamEvent)], ids=lambda s: s.type)
def test_a_received_event_of_a_known_type_decodes_as_the_event(message: m.StreamEvent) -> None:
    assert codec.decode_received_event(codec.encode(message)) == message


def test_a_received_message_that_is_not_a_stream_event_is_refused() -> None:
    with pytest.raises(CodecError, match="not a stream event"):
        codec.decode_received_event(codec.encode(_sample(m.JobAccepted)))


def test_unknown_types_say_to_log_the_first_message_of_each_type_only() -> None:
    seen = UnknownTypes()
    assert [seen.note(tag) for tag in ("a", "a", "b", "a", "b")] == [
        codec.Noted("a", True),
        codec.Noted("a", False),
        codec.Noted("b", True),
        codec.Noted("a", False),
        codec.Noted("b", False),
    ]


def test_unknown_types_past_max_types_are_counted_as_other_once_logged() -> None:
    seen = UnknownTypes(max_types=2)
    seen.note("a")
    seen.note("b")
    assert seen.note("c") == codec.Noted(OTHER_TYPES, True)
    assert seen.note("d") == codec.Noted(OTHER_TYPES, False)
    assert seen.note("a") == codec.Noted("a", False)


def test_an_unknown_type_is_named_by_its_first_max_type_label_chars() -> None:
    long_tag = "x" * (MAX_TYPE_LABEL_CHARS * 4)
    assert UnknownTypes().note(long_tag).label == "x" * MAX_TYPE_LABEL_CHARS
