"""Spec of the WebSocket control protocol: commands parsed strictly, replies echo ``ref``."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from tokenrelay.gateway.control import (
    MAX_COMMENT_CHARS,
    MAX_REF_CHARS,
    ControlError,
    FeedbackCommand,
    Start,
    Stop,
    error_reply,
    parse_command,
    reply,
)
from tokenrelay.wire.errors import BadRequest, Overloaded

SID = "0123456789abcdef0123456789abcdef"


def command(**fields: Any) -> str:
    return orjson.dumps(fields).decode()


def control_error(text: str) -> ControlError:
    with pytest.raises(ControlError) as info:
        parse_command(text)
    assert info.value.code == "bad_request"
    assert isinstance(info.value, BadRequest)
    return info.value


def test_start_command_carries_the_whole_body_and_ref() -> None:
    parsed = parse_command(command(type="start", ref="r1", prompt="hi", max_tokens=5))
    assert isinstance(parsed, Start)
    assert parsed.ref == "r1"
    assert parsed.body["prompt"] == "hi"
    assert parsed.body["max_tokens"] == 5


def test_stop_command_carries_stream_id_and_ref() -> None:
    assert parse_command(command(type="stop", stream_id=SID, ref=7)) == Stop(7, SID)


def test_command_without_ref_has_ref_none() -> None:
    assert parse_command(command(type="stop", stream_id=SID)) == Stop(None, SID)


@pytest.mark.parametrize("rating", ["up", "down"])
def test_feedback_command_carries_rating_and_no_comment(rating: str) -> None:
    parsed = parse_command(command(type="feedback", stream_id=SID, rating=rating, ref="f"))
    assert parsed == FeedbackCommand("f", SID, rating, None)  # type: ignore[arg-type]


def test_feedback_command_carries_a_comment_up_to_max_comment_chars() -> None:
    comment = "é" * MAX_COMMENT_CHARS
    parsed = parse_command(command(type="feedback", stream_id=SID, rating="down", comment=comment))
    assert parsed == FeedbackCommand(None, SID, "down", comment)


def test_ref_up_to_max_ref_chars_is_accepted() -> None:
    ref = "r" * MAX_REF_CHARS
    assert parse_command(command(type="stop", stream_id=SID, ref=ref)).ref == ref


@pytest.mark.parametrize("text", ["", "{", "not json", "{'type': 'stop'}", '{"type": "stop",}'])
def test_text_that_is_not_json_is_a_bad_request_without_ref(text: str) -> None:
    assert control_error(text).ref is None


@pytest.mark.parametrize("text", ["[]", '["stop"]', "1", '"stop"', "null"])
def test_json_that_is_not_an_object_is_a_bad_request_without_ref(text: str) -> None:
    assert control_error(text).ref is None


@pytest.mark.parametrize("kind", ["restart", "STOP", "", None, 1, ["stop"]])
def test_unknown_type_is_a_bad_request_echoing_ref(kind: Any) -> None:
    assert control_error(command(type=kind, ref="r2", stream_id=SID)).ref == "r2"


def test_missing_type_is_a_bad_request_echoing_ref() -> None:
    assert control_error(command(ref=3, stream_id=SID)).ref == 3


@pytest.mark.parametrize("kind", ["stop", "feedback"])
@pytest.mark.parametrize("stream_id", [..., None, "", 5, [SID]])
def test_missing_or_invalid_stream_id_is_a_bad_request_echoing_ref(kind: str, stream_id: Any) -> None:
    fields: dict[str, Any] = {"type": kind, "ref": "r3", "rating": "up"}
    if stream_id is not ...:
        fields["stream_id"] = stream_id
    assert control_error(command(**fields)).ref == "r3"


@pytest.mark.parametrize("rating", [..., None, "", "UP", "sideways", 1, True, ["up"]])
def test_bad_rating_is_a_bad_request_echoing_ref(rating: Any) -> None:
    fields: dict[str, Any] = {"type": "feedback", "ref": 4, "stream_id": SID}
    if rating is not ...:
        fields["rating"] = rating
    assert control_error(command(**fields)).ref == 4


def test_comment_over_max_comment_chars_is_a_bad_request_echoing_ref() -> None:
    text = command(type="feedback", ref="r5", stream_id=SID, rating="up", comment="x" * (MAX_COMMENT_CHARS + 1))
    assert control_error(text).ref == "r5"


@pytest.mark.parametrize("comment", [1, True, ["nice"], {"text": "nice"}])
def test_non_string_comment_is_a_bad_request_echoing_ref(comment: Any) -> None:
    text = command(type="feedback", ref="r6", stream_id=SID, rating="up", comment=comment)
    assert control_error(text).ref == "r6"


@pytest.mark.parametrize("ref", [1.5, True, False, ["r"], {"r": 1}, "r" * (MAX_REF_CHARS + 1)])
def test_bad_ref_is_a_bad_request_without_ref(ref: Any) -> None:
    assert control_error(command(type="stop", stream_id=SID, ref=ref)).ref is None


def test_reply_is_json_with_type_and_fields_echoing_ref() -> None:
    text = reply("started", "r1", stream_id=SID, events_url=f"/v1/streams/{SID}/events")
    assert orjson.loads(text) == {
        "type": "started",
        "stream_id": SID,
        "events_url": f"/v1/streams/{SID}/events",
        "ref": "r1",
    }


def test_reply_omits_ref_when_none_was_given() -> None:
    assert orjson.loads(reply("ack", None)) == {"type": "ack"}


def test_reply_echoes_falsy_refs() -> None:
    assert orjson.loads(reply("ack", 0)) == {"type": "ack", "ref": 0}
    assert orjson.loads(reply("ack", "")) == {"type": "ack", "ref": ""}


def test_error_reply_carries_stable_code_and_message_and_echoes_ref() -> None:
    assert orjson.loads(error_reply(ControlError("bad thing", ref=9), 9)) == {
        "type": "error",
        "code": "bad_request",
        "message": "bad thing",
        "ref": 9,
    }


def test_error_reply_without_ref_has_no_ref() -> None:
    assert orjson.loads(error_reply(ControlError("bad thing", ref=None), None)) == {
        "type": "error",
        "code": "bad_request",
        "message": "bad thing",
    }


def test_error_reply_to_retry_later_errors_says_when_to_retry() -> None:
    assert orjson.loads(error_reply(Overloaded("busy", retry_after_s=3), None)) == {
        "type": "error",
        "code": "overloaded",
        "message": "busy",
        "retry_after_s": 3,
    }
