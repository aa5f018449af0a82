"""Spec of ``unsupported_parameter`` on the compatible APIs: a client error (400) in each API's own shape, whether
admission refused the request or its stream ended with that error."""

from __future__ import annotations

from tokenrelay.streamer.compat import anthropic, openai
from tokenrelay.streamer.compat.http import stream_error_status
from tokenrelay.wire.errors import ErrorCode

CODE = str(ErrorCode.UNSUPPORTED_PARAMETER)
MESSAGE = "no runner of model 'tiny' can honour the parameter 'tools'"


def test_a_stream_that_ends_with_unsupported_parameter_answers_a_non_streamed_request_400_not_500() -> None:
    assert stream_error_status(CODE) == 400
    assert anthropic.http_status(CODE, stream_error_status(CODE)) == 400


def test_an_error_without_a_status_of_its_own_still_answers_500() -> None:
    assert stream_error_status(ErrorCode.ENGINE_ERROR) == 500


def test_openai_gets_unsupported_parameter_as_an_invalid_request_error_with_its_code() -> None:
    error = openai.error_body(CODE, MESSAGE)["error"]
    assert (error["type"], error["code"], error["message"]) == ("invalid_request_error", CODE, MESSAGE)


def test_anthropic_gets_unsupported_parameter_as_an_invalid_request_error_naming_the_code() -> None:
    body = anthropic.error_body(CODE, MESSAGE)
    assert body == {"type": "error", "error": {"type": "invalid_request_error", "message": f"{CODE}: {MESSAGE}"}}
