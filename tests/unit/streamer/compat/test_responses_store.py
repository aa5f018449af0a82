"""Spec of a stored response's record and keys: one owner's keys apart from another's, by kind (background or
not), and a record that survives its encoding whole or is refused as not a record."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import orjson
import pytest

from tokenrelay.streamer.compat.response_events import ResponseHead
from tokenrelay.streamer.compat.responses_store import (
    OWNER_DIGEST_CHARS,
    StoredResponse,
    background_prefix,
    owner_prefix,
    record_key,
)
from tokenrelay.wire.codec import CodecError
from tokenrelay.wire.content import ChatMessage, ContentPart, ToolCall

CONVERSATION = (
    ChatMessage(role="developer", content="answer in French"),
    ChatMessage(
        role="user",
        content=(
            ContentPart(type="text", text="what is in this picture?"),
            ContentPart(type="image_url", image_url="data:image/png;base64,iVBORw0KGgo=", detail="high"),
            ContentPart(type="image_url", image_url="https://example.com/cat.png"),
        ),
    ),
    ChatMessage(
        role="assistant",
        tool_calls=(
            ToolCall(id="call_1", name="describe", arguments='{"detail": "full"}'),
            ToolCall(id="call_2", name="weather", arguments="{}"),
        ),
    ),
    ChatMessage(role="tool", content="a cat on a mat", tool_call_id="call_1"),
    ChatMessage(role="tool", content="sunny", tool_call_id="call_2", name="weather"),
    ChatMessage(role="assistant", content="Un chat sur un tapis."),
)


RECORD = StoredResponse(
    stream_id="s1",
    epoch="e7",
    created_at=1_700_000_000,
    model="m",
    background=True,
    echo={"metadata": {"topic": "cats"}, "store": True, "tools": [], "temperature": 0.5},
    conversation=CONVERSATION,
)


def raw_record(**fields: object) -> bytes:
    body = orjson.loads(RECORD.encode()) | fields
    return orjson.dumps(body)


# -- keys


def test_an_owners_prefix_is_o_and_the_first_hex_digits_of_its_names_sha256() -> None:
    digest = hashlib.sha256(b"acme").hexdigest()
    assert owner_prefix("acme") == "o" + digest[:OWNER_DIGEST_CHARS]
    assert len(owner_prefix("acme")) == 1 + OWNER_DIGEST_CHARS


def test_owner_digests_differ_per_tenant_and_for_no_owner() -> None:
    prefixes = {owner_prefix(owner) for owner in (None, "acme", "globex", "acme ", "Acme")}
    assert len(prefixes) == 5


def test_no_owner_has_the_digest_of_the_empty_name() -> None:
    assert owner_prefix(None) == owner_prefix("") == "o" + hashlib.sha256(b"").hexdigest()[:OWNER_DIGEST_CHARS]


def test_a_record_key_names_its_owner_its_kind_and_its_stream() -> None:
    assert record_key("acme", "s1", background=True) == f"{owner_prefix('acme')}.bg.s1"
    assert record_key("acme", "s1", background=False) == f"{owner_prefix('acme')}.fg.s1"
    assert record_key(None, "s1", background=False) == f"{owner_prefix(None)}.fg.s1"


def test_one_stream_has_a_different_key_per_owner_and_per_kind() -> None:
    keys = {
        record_key(owner, "s1", background=background)
        for owner in (None, "acme", "globex")
        for background in (True, False)
    }
    assert len(keys) == 6


def test_the_background_prefix_starts_an_owners_background_keys_only() -> None:
    prefix = background_prefix("acme")
    assert prefix == f"{owner_prefix('acme')}.bg."
    assert record_key("acme", "s1", background=True).startswith(prefix)
    assert not record_key("acme", "s1", background=False).startswith(prefix)
    assert not record_key("globex", "s1", background=True).startswith(prefix)
    assert not record_key(None, "s1", background=True).startswith(prefix)


def test_keys_hold_only_characters_a_kv_key_may_hold() -> None:
    key = record_key("tenant with spaces/and.dots", "s-1_A", background=True)
    assert all(c.isalnum() or c in "._-" for c in key)
    assert key.count(".") == 2


# -- the record


def test_a_stored_response_survives_its_encoding_whole() -> None:
    assert StoredResponse.decode(RECORD.encode()) == RECORD


def test_a_foreground_record_with_an_empty_conversation_survives_its_encoding() -> None:
    record = replace(RECORD, background=False, conversation=(), echo={})
    assert StoredResponse.decode(record.encode()) == record


def test_a_records_conversation_is_encoded_in_the_openai_chat_shape() -> None:
    body = orjson.loads(RECORD.encode())
    assert body["conversation"] == [message.to_openai() for message in CONVERSATION]
    assert body["conversation"][2]["tool_calls"][0] == {
        "id": "call_1",
        "type": "function",
        "function": {"name": "describe", "arguments": '{"detail": "full"}'},
    }
    assert body["conversation"][1]["content"][1] == {
        "type": "image_url",
        "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=", "detail": "high"},
    }


def test_a_stored_responses_head_is_its_response_id_creation_model_and_echo() -> None:
    assert RECORD.head == ResponseHead(id="resp_s1", created_at=1_700_000_000, model="m", echo=RECORD.echo)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not json",
        b"\xff\xfe",
        b"null",
        b"[]",
        b'"a string"',
        b"{}",
        b'{"stream_id": "s1"}',
    ],
)
def test_decoding_what_is_not_json_of_a_record_raises_a_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError):
        StoredResponse.decode(data)


@pytest.mark.parametrize("missing", ["stream_id", "epoch", "created_at", "model", "background", "echo", "conversation"])
def test_decoding_a_record_without_one_of_its_fields_raises_a_codec_error(missing: str) -> None:
    body = orjson.loads(RECORD.encode())
    del body[missing]
    with pytest.raises(CodecError):
        StoredResponse.decode(orjson.dumps(body))


@pytest.mark.parametrize(
    "fields",
    [
        {"created_at": "yesterday"},
        {"created_at": None},
        {"echo": [1, 2]},
        {"echo": None},
        {"conversation": None},
        {"conversation": 7},
        {"conversation": ["hello"]},
        {"conversation": [{"content": "no role"}]},
        {"conversation": [{"role": "user"}]},
        {"conversation": [{"role": "user", "content": [{"type": "audio"}]}]},
        {"conversation": [{"role": "assistant", "tool_calls": [{"id": "c", "function": {"name": 1}}]}]},
    ],
)
def test_decoding_a_record_with_a_field_of_the_wrong_shape_raises_a_codec_error(fields: dict[str, object]) -> None:
    with pytest.raises(CodecError):
        StoredResponse.decode(raw_record(**fields))
