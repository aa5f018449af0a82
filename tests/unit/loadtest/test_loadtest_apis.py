"""What a load test sends over each API, and how it accounts for the events that answer (sans-I/O)."""

from __future__ import annotations

import orjson
import pytest

from tokenrelay.cli.commands import build_parser
from tokenrelay.client.sse import ServerSentEvent
from tokenrelay.loadtest.apis import (
    AnthropicAccount,
    Api,
    OpenAIAccount,
    StreamAccount,
    api_error_code,
    auth_headers,
    new_account,
    request_body,
)
from tokenrelay.loadtest.command import config_from_args
from tokenrelay.loadtest.plan import LoadTestConfig


def data(obj: object, event: str = "message") -> ServerSentEvent:
    return ServerSentEvent(event, orjson.dumps(obj).decode(), None, "")


def chunk(content: str | None = None, finish: str | None = None) -> ServerSentEvent:
    delta = {} if content is None else {"content": content}
    return data({"id": "c", "object": "chat.completion.chunk", "choices": [{"delta": delta, "finish_reason": finish}]})


DONE = ServerSentEvent("message", "[DONE]", None, "")


def anthropic(kind: str, **fields: object) -> ServerSentEvent:
    return data({"type": kind, **fields}, event=kind)


def text(piece: str) -> ServerSentEvent:
    return anthropic("content_block_delta", index=0, delta={"type": "text_delta", "text": piece})


def stop_delta(reason: str, output_tokens: int | None = None) -> ServerSentEvent:
    usage = {} if output_tokens is None else {"output_tokens": output_tokens}
    return anthropic("message_delta", delta={"stop_reason": reason}, usage=usage)


def feed_all(account: StreamAccount, events: list[ServerSentEvent]) -> list[int]:
    return [account.feed(event) for event in events]


def test_an_openai_request_streams_a_chat_completion_with_usage() -> None:
    body = orjson.loads(request_body(Api.OPENAI, model="m1", prompt="hi", max_tokens=7))
    assert body == {
        "model": "m1",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 7,
        "stream": True,
        "stream_options": {"include_usage": True},
    }


def test_an_anthropic_request_streams_a_message() -> None:
    body = orjson.loads(request_body(Api.ANTHROPIC, model="m2", prompt="hi", max_tokens=3))
    assert body == {"model": "m2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3, "stream": True}


def test_a_native_request_names_no_model() -> None:
    assert orjson.loads(request_body(Api.NATIVE, model="m", prompt="p", max_tokens=2)) == {
        "prompt": "p",
        "max_tokens": 2,
    }


def test_the_api_key_goes_as_a_bearer_token_and_to_anthropic_as_x_api_key() -> None:
    assert auth_headers(Api.NATIVE, "k") == {"Authorization": "Bearer k"}
    assert auth_headers(Api.OPENAI, "k") == {"Authorization": "Bearer k"}
    assert auth_headers(Api.ANTHROPIC, "k") == {"x-api-key": "k", "anthropic-version": "2023-06-01"}
    assert auth_headers(Api.OPENAI, None) == {}


def test_each_openai_chunk_with_content_is_one_piece_and_done_ends_the_stream() -> None:
    account = OpenAIAccount()
    role = data({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
    seen = feed_all(account, [role, chunk("a"), chunk("bc"), chunk(finish="length")])
    assert seen == [0, 1, 1, 0]
    assert not account.ended
    assert account.feed(DONE) == 0
    assert account.ended
    assert (account.pieces, account.tokens, account.failure()) == (2, 2, None)


def test_openai_usage_counts_the_tokens_when_the_server_reports_it() -> None:
    account = OpenAIAccount()
    usage = data({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})
    feed_all(account, [chunk("merged tokens"), chunk("more", finish="stop"), usage, DONE])
    assert (account.pieces, account.usage_tokens, account.tokens) == (2, 5, 5)
    assert account.failure() is None


def test_reasoning_and_tool_call_chunks_are_not_pieces_of_text() -> None:
    account = OpenAIAccount()
    reasoning = data({"choices": [{"delta": {"reasoning_content": "hmm"}}]})
    tool = data({"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": "{"}}]}}]})
    assert feed_all(account, [reasoning, tool]) == [0, 0]


def test_an_openai_error_object_ends_the_stream_with_its_code() -> None:
    account = OpenAIAccount()
    account.feed(chunk("a"))
    account.feed(data({"error": {"message": "no", "type": "server_error", "code": "overloaded"}}))
    assert account.ended
    assert account.failure() == "overloaded"


def test_an_error_object_without_a_string_code_is_named_by_its_type_or_internal() -> None:
    typed = OpenAIAccount()
    typed.feed(data({"error": {"message": "no", "type": "BadRequestError", "code": 400}}))
    assert typed.failure() == "BadRequestError"
    bare = OpenAIAccount()
    bare.feed(data({"error": "no"}))
    assert bare.failure() == "internal"


def test_a_stream_whose_body_ends_before_its_terminal_event_fails_as_a_connection_error() -> None:
    account = OpenAIAccount()
    account.feed(chunk("a"))
    assert account.failure() == "connection_error"


def test_a_finish_reason_other_than_an_asked_for_end_fails_the_stream() -> None:
    account = OpenAIAccount()
    feed_all(account, [chunk("a"), chunk(finish="cancelled"), DONE])
    assert account.failure() == "finish_reason_cancelled"
    tools = OpenAIAccount()
    feed_all(tools, [chunk(finish="tool_calls"), DONE])
    assert tools.failure() is None


def test_a_chunk_that_is_not_a_json_object_is_a_protocol_error() -> None:
    with pytest.raises(ValueError):
        OpenAIAccount().feed(ServerSentEvent("message", "[1, 2]", None, ""))
    with pytest.raises(ValueError):
        OpenAIAccount().feed(ServerSentEvent("message", "{not json", None, ""))


def test_anthropic_text_deltas_are_pieces_and_message_delta_usage_counts_the_tokens() -> None:
    account = AnthropicAccount()
    start = anthropic("message_start", message={"usage": {"input_tokens": 3, "output_tokens": 1}})
    block = anthropic("content_block_start", index=0, content_block={"type": "text", "text": ""})
    thinking = anthropic("content_block_delta", index=0, delta={"type": "thinking_delta", "thinking": "x"})
    events = [start, block, anthropic("ping"), text("a"), thinking, text("b"), anthropic("content_block_stop")]
    assert feed_all(account, events) == [0, 0, 0, 1, 0, 1, 0]
    account.feed(stop_delta("max_tokens", output_tokens=4))
    assert not account.ended
    account.feed(anthropic("message_stop"))
    assert account.ended
    assert (account.pieces, account.tokens, account.failure()) == (2, 4, None)


def test_an_anthropic_error_event_ends_the_stream_with_its_type() -> None:
    account = AnthropicAccount()
    account.feed(anthropic("error", error={"type": "overloaded_error", "message": "overloaded: busy"}))
    assert account.ended
    assert account.failure() == "overloaded_error"


def test_an_anthropic_refusal_fails_the_stream() -> None:
    account = AnthropicAccount()
    feed_all(account, [stop_delta("refusal"), anthropic("message_stop")])
    assert account.failure() == "finish_reason_refusal"


def test_an_error_answer_is_named_by_its_code_or_type_else_by_its_status() -> None:
    assert api_error_code(503, b'{"error": {"code": "overloaded", "message": "x"}}') == "overloaded"
    assert api_error_code(529, b'{"type": "error", "error": {"type": "overloaded_error"}}') == "overloaded_error"
    assert api_error_code(502, b"<html>bad gateway</html>") == "http_502"
    assert api_error_code(500, b'["not an object"]') == "http_500"


def test_the_native_api_has_no_account_of_its_own() -> None:
    assert isinstance(new_account(Api.OPENAI), OpenAIAccount)
    with pytest.raises(ValueError):
        new_account(Api.NATIVE)


@pytest.mark.parametrize("flag", ["--stop-fraction", "--never-read-fraction"])
@pytest.mark.parametrize("api", ["openai", "anthropic"])
def test_stops_and_never_read_readers_are_refused_with_another_api(flag: str, api: str) -> None:
    args = build_parser().parse_args(["loadtest", "--api", api, flag, "0.1"])
    with pytest.raises(ValueError, match=f"{flag} works with --api native only"):
        config_from_args(args)


def test_the_api_and_model_reach_the_config_and_its_json() -> None:
    config = config_from_args(build_parser().parse_args(["loadtest", "--api", "anthropic", "--model", "claude-x"]))
    assert (config.api, config.model) == (Api.ANTHROPIC, "claude-x")
    assert config.to_json()["api"] == "anthropic"
    assert LoadTestConfig().api is Api.NATIVE
