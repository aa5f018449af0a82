"""Spec of the wire codec: every message round-trips; anything malformed is a CodecError."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import orjson
import pytest

from tokenrelay.wire import codec
from tokenrelay.wire import content as c
from tokenrelay.wire import messages as m
from tokenrelay.wire.codec import CodecError

SID = "0123456789abcdef0123456789abcdef"

SAMPLES: list[m.Message] = [
    m.JobRequest(
        stream_id=SID,
        epoch="e1",
        gateway_id="gateway-1",
        model="synthetic",
        messages=(c.ChatMessage(role="system", content="be brief"), c.ChatMessage(role="user", content="hi")),
        max_tokens=64,
        created=1_700_000_000,
    ),
    m.JobAccepted(stream_id=SID, runner_id="runner-1"),
    m.JobRejected(stream_id=SID, code="overloaded", message="at capacity"),
    m.StreamStart(stream_id=SID, epoch="e1", model="synthetic", created=1_700_000_000, runner_id="r", ts=1.5),
    m.StreamDelta(seq=1, text="Hello", index=1, count=1, ts=2.25),
    m.ReasoningDelta(seq=2, text="First, ", index=3, count=2, ts=2.5, held_s=0.01),
    m.ToolCallDelta(seq=3, call=0, id="call_1", name="get_weather", arguments='{"ci', index=4, count=1, ts=2.75),
    m.StreamEnd(seq=2, finish_reason=m.FinishReason.STOP, tokens=1, ttft_ms=12.5),
    m.StreamEnd(
        seq=3,
        finish_reason=m.FinishReason.CANCELLED,
        tokens=2,
        ttft_ms=None,
        cancel_reason=m.CancelReason.DISCONNECT,
    ),
    m.StreamError(seq=4, code="engine_error", message="boom", tokens=3),
    m.StreamDelta(seq=9, text=" on", index=9, count=1, ts=3.0, gen=1, fence=8),
    m.StreamFence(gen=1, fence=8),
    m.JobRequest(
        stream_id=SID,
        epoch="e1",
        gateway_id="gateway-2",
        model="synthetic",
        messages=(c.ChatMessage(role="user", content="hi"),),
        max_tokens=64,
        created=1_700_000_000,
        continuation=m.Continuation(gen=1, seq=8, tokens=7, text="Hello there", typed=False),
    ),
    m.CancelRequest(stream_id=SID, reason=m.CancelReason.CLIENT),
    m.CancelReply(stream_id=SID, found=True, finish_reason=m.FinishReason.CANCELLED, tokens=7),
    m.CancelReply(stream_id=SID, found=False, finish_reason=None, tokens=0),
    m.RunnerHeartbeat(runner_id="runner-1", engine="synthetic", model="m", active=1, capacity=8, ts=3.0),
    m.StreamRecord(stream_id=SID, state=m.StreamState.QUEUED, model="m", created=1, epoch="e1", gateway_id="g"),
    m.StreamRecord(
        stream_id=SID,
        state=m.StreamState.FINISHED,
        model="m",
        created=1,
        epoch="e1",
        gateway_id="g",
        runner_id="runner-1",
        finish_reason=m.FinishReason.ERROR,
        tokens=5,
        ttft_ms=3.5,
        error_code="engine_error",
    ),
    m.Feedback(stream_id=SID, rating="up", ts=4.0),
    m.Feedback(stream_id=SID, rating="down", comment="too slow", ts=4.0),
    m.StartRequest(messages=(c.ChatMessage(role="user", content="hi"),), max_tokens=5, model="synthetic"),
    m.StartRequest(messages=(c.ChatMessage(role="system", content="s"), c.ChatMessage(role="user", content="u"))),
    m.StartRefused(code="overloaded", message="too many streams are waiting", retry_after_s=1.0),
    m.StartRefused(code="bad_request", message="max_tokens must be at most 500"),
    m.ModelsRequest(),
    m.ModelList(models=("synthetic", "gpt2")),
    m.ModelList(),
    m.StreamDone(stream_id="0" * 32),
    m.ReplayRequest(stream_id="0" * 32, from_seq=3, max_events=256),
    m.ReplayPage(stream_id="0" * 32, events=2, more=True, held=True),
    m.StreamerLag(streamer_id="streamer-1f2e3d4c", lag_s=0.25),
]

MULTIBYTE_TEXTS = [
    "café naïve façade",
    "日本語 流式 トークン 한국어",
    "😀🚀🧪 👩\u200d💻",
    "line one\nline two\r\nline three\r",
    '\t"quoted" \\ backslash \u2028 separator',
    "",
]


def _by_type(type_tag: str) -> m.Message:
    return next(s for s in SAMPLES if s.type == type_tag)


def _wire(message: m.Message, /, **changes: Any) -> bytes:
    """The message as a JSON object with some fields replaced (or removed when the value is ...)."""
    obj = orjson.loads(codec.encode(message))
    for name, value in changes.items():
        if value is ...:
            del obj[name]
        else:
            obj[name] = value
    return orjson.dumps(obj)


def _required_fields() -> list[tuple[str, str]]:
    cases = []
    for cls in typing.get_args(m.Message):
        for field in dataclasses.fields(cls):
            if field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
                cases.append((cls.__dataclass_fields__["type"].default, field.name))
    return cases


def test_samples_cover_every_message_type() -> None:
    assert {type(s) for s in SAMPLES} == set(typing.get_args(m.Message))


@pytest.mark.parametrize("message", SAMPLES, ids=lambda s: type(s).__name__)
def test_every_message_round_trips_through_encode_and_decode(message: m.Message) -> None:
    assert codec.decode(codec.encode(message)) == message


@pytest.mark.parametrize("message", SAMPLES, ids=lambda s: type(s).__name__)
def test_encoded_message_is_a_json_object_tagged_with_its_type(message: m.Message) -> None:
    obj = orjson.loads(codec.encode(message))
    assert isinstance(obj, dict)
    assert obj["type"] == message.type


def test_decode_accepts_str_as_well_as_bytes() -> None:
    message = _by_type("delta")
    assert codec.decode(codec.encode(message).decode()) == message


@pytest.mark.parametrize("text", MULTIBYTE_TEXTS)
def test_delta_text_with_multibyte_characters_and_line_breaks_round_trips(text: str) -> None:
    message = m.StreamDelta(seq=1, text=text, index=1, count=1, ts=0.0)
    assert codec.decode_as(codec.encode(message), m.StreamDelta).text == text


@pytest.mark.parametrize("text", MULTIBYTE_TEXTS)
def test_chat_message_content_with_multibyte_characters_round_trips(text: str) -> None:
    message = dataclasses.replace(
        typing.cast(m.JobRequest, _by_type("job")), messages=(c.ChatMessage(role="user", content=text),)
    )
    assert codec.decode_as(codec.encode(message), m.JobRequest).messages[0].content == text


@pytest.mark.parametrize("data", [b"", b"{", b"not json", b'{"type": "delta",}', b"\xff\xfe", "{'a': 1}"])
def test_decode_rejects_invalid_json(data: bytes | str) -> None:
    with pytest.raises(CodecError):
        codec.decode(data)


@pytest.mark.parametrize("data", [b"[]", b"1", b'"start"', b"null", b"true", b'[{"type": "start"}]'])
def test_decode_rejects_json_that_is_not_an_object(data: bytes) -> None:
    with pytest.raises(CodecError):
        codec.decode(data)


@pytest.mark.parametrize("data", [b"{}", b'{"type": "nope"}', b'{"type": "Start"}', b'{"type": 1}', b'{"type": null}'])
def test_decode_rejects_missing_or_unknown_type_tag(data: bytes) -> None:
    with pytest.raises(CodecError):
        codec.decode(data)


@pytest.mark.parametrize("data", [b'{"type": []}', b'{"type": {}}', b'{"type": ["start"]}'])
def test_decode_rejects_unhashable_type_tag_with_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        codec.decode(data)


@pytest.mark.parametrize(("type_tag", "field"), _required_fields())
def test_decode_rejects_message_missing_required_field(type_tag: str, field: str) -> None:
    with pytest.raises(CodecError, match=field):
        codec.decode(_wire(_by_type(type_tag), **{field: ...}))


@pytest.mark.parametrize(
    ("type_tag", "field", "value"),
    [
        ("delta", "seq", True),
        ("delta", "seq", "1"),
        ("delta", "seq", 1.0),
        ("delta", "seq", None),
        ("delta", "index", False),
        ("delta", "count", "3"),
        ("delta", "text", 5),
        ("delta", "text", ["a"]),
        ("delta", "ts", "1.5"),
        ("delta", "ts", True),
        ("start", "created", 1.5),
        ("start", "stream_id", 123),
        ("job", "max_tokens", True),
        ("job", "max_tokens", "10"),
        ("job", "messages", "hi"),
        ("job", "messages", [1]),
        ("job", "messages", [{"content": "no role"}]),
        ("job", "messages", [{"role": "user", "content": 5}]),
        ("job", "messages", {"role": "user", "content": "x"}),
        ("cancel_reply", "found", 1),
        ("cancel_reply", "found", "true"),
        ("cancel_reply", "tokens", None),
        ("runner_heartbeat", "capacity", 8.0),
        ("record", "runner_id", 5),
        ("record", "tokens", None),
        ("end", "ttft_ms", "12"),
        ("feedback", "comment", 1),
        ("feedback", "ts", None),
    ],
)
def test_decode_rejects_field_of_wrong_type(type_tag: str, field: str, value: Any) -> None:
    with pytest.raises(CodecError):
        codec.decode(_wire(_by_type(type_tag), **{field: value}))


@pytest.mark.parametrize(
    ("type_tag", "field", "value"),
    [
        ("end", "finish_reason", "done"),
        ("end", "finish_reason", "STOP"),
        ("end", "finish_reason", 1),
        ("end", "cancel_reason", "bored"),
        ("cancel", "reason", "CLIENT"),
        ("cancel_reply", "finish_reason", "finished"),
        ("record", "state", "paused"),
        ("feedback", "rating", "meh"),
        ("feedback", "rating", "UP"),
        ("feedback", "rating", None),
    ],
)
def test_decode_rejects_bad_enum_or_literal_value(type_tag: str, field: str, value: Any) -> None:
    with pytest.raises(CodecError):
        codec.decode(_wire(_by_type(type_tag), **{field: value}))


@pytest.mark.parametrize("value", [[], {}])
def test_decode_rejects_unhashable_literal_value_with_codec_error(value: Any) -> None:
    with pytest.raises(CodecError):
        codec.decode(_wire(_by_type("feedback"), rating=value))


def test_decode_as_returns_message_of_the_expected_class() -> None:
    message = _by_type("job_accepted")
    assert codec.decode_as(codec.encode(message), m.JobAccepted) == message


def test_decode_as_rejects_message_of_another_class() -> None:
    with pytest.raises(CodecError, match="JobRejected"):
        codec.decode_as(codec.encode(_by_type("job_accepted")), m.JobRejected)


def test_decode_as_rejects_invalid_bytes_with_codec_error() -> None:
    with pytest.raises(CodecError):
        codec.decode_as(b"{", m.JobAccepted)


@pytest.mark.parametrize("type_tag", ["start", "delta", "end", "error"])
def test_decode_event_accepts_every_stream_event(type_tag: str) -> None:
    message = _by_type(type_tag)
    assert codec.decode_event(codec.encode(message)) == message


@pytest.mark.parametrize("type_tag", ["job", "cancel", "record", "feedback"])
def test_decode_event_rejects_message_that_is_not_a_stream_event(type_tag: str) -> None:
    with pytest.raises(CodecError):
        codec.decode_event(codec.encode(_by_type(type_tag)))


@pytest.mark.parametrize(
    "fields",
    [
        {"seq": 3, "text": "a\nb", "index": 9, "count": 2, "ts": 1.5},
        {"seq": 3, "text": "", "index": 9, "count": 0, "ts": 7},  # an int ts takes the general path
        {"seq": 1, "text": "é😀", "index": 1, "count": 1, "ts": 0.0, "extra": "ignored"},
        {"seq": 4, "text": "held", "index": 12, "count": 3, "ts": 2.5, "held_s": 0.08},
        {"seq": 4, "text": "held", "index": 12, "count": 3, "ts": 2.5, "held_s": 0},  # an int takes the general path
    ],
)
def test_decode_event_reads_a_delta_exactly_as_the_general_decoder_does(fields: dict[str, Any]) -> None:
    data = orjson.dumps({"type": "delta", **fields})
    assert codec.decode_event(data) == codec.decode(data)
    assert codec.decode_event(data) == m.StreamDelta(**{k: v for k, v in fields.items() if k != "extra"})


@pytest.mark.parametrize(
    ("field", "value"),
    [("seq", True), ("index", 1.0), ("count", "1"), ("text", None), ("ts", "1"), ("ts", False), ("held_s", "0")],
)
def test_decode_event_rejects_a_delta_field_of_the_wrong_type(field: str, value: Any) -> None:
    fields = {"type": "delta", "seq": 1, "text": "a", "index": 1, "count": 1, "ts": 1.0, field: value}
    with pytest.raises(CodecError, match=f"StreamDelta.{field}"):
        codec.decode_event(orjson.dumps(fields))


def test_a_stream_event_of_any_content_kind_decodes_as_a_stream_event() -> None:
    for sample in (_by_type("reasoning"), _by_type("tool_call")):
        assert codec.decode_event(codec.encode(sample)) == sample


def test_a_tool_call_fragment_after_the_first_needs_no_id_or_name() -> None:
    wire = b'{"type":"tool_call","seq":4,"call":0,"arguments":"ty\\": \\"Oslo\\"}","index":5,"count":1,"ts":3.0}'
    fragment = codec.decode_event(wire)
    assert fragment == m.ToolCallDelta(seq=4, call=0, arguments='ty": "Oslo"}', index=5, count=1, ts=3.0)


def test_a_decoder_ignores_fields_it_does_not_know() -> None:
    wire = b'{"type":"delta","seq":1,"text":"a","index":1,"count":1,"ts":1.0,"added_later":true}'
    assert codec.decode_event(wire) == m.StreamDelta(seq=1, text="a", index=1, count=1, ts=1.0)


def test_a_job_carries_a_tool_conversation_with_image_parts_and_the_clients_other_fields() -> None:
    messages = (
        c.ChatMessage(
            role="user",
            content=(
                c.ContentPart(type="text", text="what is in "),
                c.ContentPart(type="image_url", image_url="data:image/png;base64,iVBORw0KGgo=", detail="low"),
            ),
        ),
        c.ChatMessage(role="assistant", tool_calls=(c.ToolCall(id="call_1", name="look", arguments="{}"),)),
        c.ChatMessage(role="tool", content="a cat", tool_call_id="call_1"),
    )
    params = {"temperature": 0.2, "tools": [{"type": "function", "function": {"name": "look"}}], "top_k": 5}
    job = m.JobRequest(
        stream_id=SID, epoch="e1", gateway_id="g", model="m", messages=messages, max_tokens=8, created=1, params=params
    )
    assert codec.decode(codec.encode(job)) == job


def test_a_message_in_the_openai_shape_keeps_parts_tool_calls_and_the_call_it_answers() -> None:
    asked = c.ChatMessage(role="assistant", tool_calls=(c.ToolCall(id="c", name="f", arguments='{"a":1}'),))
    answer = c.ChatMessage(role="tool", content="42", tool_call_id="c")
    image = c.ChatMessage(role="user", content=(c.ContentPart(type="image_url", image_url="https://x/y.png"),))
    assert asked.to_openai() == {
        "role": "assistant",
        "content": None,
        "tool_calls": [{"id": "c", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}],
    }
    assert answer.to_openai() == {"role": "tool", "content": "42", "tool_call_id": "c"}
    assert image.to_openai() == {
        "role": "user",
        "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
    }
    assert image.text() == "" and c.ChatMessage(role="user", content="hi").text() == "hi"


def test_params_that_are_not_a_json_object_are_refused() -> None:
    wire = codec.encode(_by_type("job")).replace(b'"params":{}', b'"params":[1]')
    with pytest.raises(CodecError, match="params"):
        codec.decode(wire)


@pytest.mark.parametrize("kind", ["delta", "reasoning"])
@pytest.mark.parametrize(
    "fields",
    [
        {"text": " tok", "ts": 1796525004.9964433, "held_s": 6.088994268793613e-6, "gen": 0, "fence": 0},
        {"text": ' \u65e5\u672c \U0001f469\u200d\U0001f4bb "q"\n', "ts": 1.0, "held_s": 0.0, "gen": 2, "fence": 41},
        {"text": "", "ts": 0.5, "held_s": 1e-300, "gen": 1, "fence": 7},
    ],
)
def test_a_text_delta_encoded_from_its_fields_is_byte_for_byte_the_encoded_message(
    kind: str, fields: dict[str, Any]
) -> None:
    fields = {"seq": 12, "index": 11, "count": 3, **fields}
    message = m.StreamDelta(**fields) if kind == "delta" else m.ReasoningDelta(**fields)
    assert codec.encode_text_delta(kind, **fields) == codec.encode(message)  # type: ignore[arg-type]
    assert codec.decode(codec.encode_text_delta(kind, **fields)) == message  # type: ignore[arg-type]


def test_the_fast_delta_decoder_sets_exactly_the_fields_a_stream_delta_has() -> None:
    assert tuple(f.name for f in dataclasses.fields(m.StreamDelta)) == codec.DELTA_FIELDS
    data = b'{"type":"delta","seq":3,"text":"hi","index":2,"count":1,"ts":1.5,"held_s":0.25,"gen":1,"fence":2}'
    decoded = codec.decode_event(data)
    assert decoded == m.StreamDelta(seq=3, text="hi", index=2, count=1, ts=1.5, held_s=0.25, gen=1, fence=2)
    assert hash(decoded) == hash(m.StreamDelta(seq=3, text="hi", index=2, count=1, ts=1.5, held_s=0.25, gen=1, fence=2))
    with pytest.raises(dataclasses.FrozenInstanceError):
        decoded.seq = 4  # type: ignore[misc]
