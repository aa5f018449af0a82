"""A stored response's input listed as Responses items: messages, function calls and their outputs, paged."""

from __future__ import annotations

import pytest

from tokenrelay.streamer.compat.response_items import MAX_LIMIT, Page, input_items, listing
from tokenrelay.wire.content import ChatMessage, ContentPart, ToolCall
from tokenrelay.wire.errors import BadRequest, ErrorCode

PNG = "data:image/png;base64,iVBORw0KGgo="
CONVERSATION = (
    ChatMessage(
        role="user", content=(ContentPart(type="text", text="Look:"), ContentPart(type="image_url", image_url=PNG))
    ),
    ChatMessage(role="assistant", content="Checking.", tool_calls=(ToolCall(id="call_1", name="f", arguments="{}"),)),
    ChatMessage(role="tool", content='{"ok": true}', tool_call_id="call_1"),
    ChatMessage(role="developer", content="Be brief."),
)


def test_each_message_becomes_its_item_and_each_tool_call_a_function_call_item() -> None:
    items = input_items("s1", CONVERSATION)
    assert [item["id"] for item in items] == [f"in_s1_{i}" for i in range(5)]
    assert items[0] == {
        "id": "in_s1_0", "type": "message", "role": "user", "status": "completed",
        "content": [
            {"type": "input_text", "text": "Look:"}, {"type": "input_image", "image_url": PNG, "detail": "auto"},
        ],
    }  # fmt: skip
    assert items[1]["content"] == [{"type": "output_text", "text": "Checking.", "annotations": []}]
    assert items[2] == {
        "id": "in_s1_2", "type": "function_call", "call_id": "call_1", "name": "f", "arguments": "{}",
        "status": "completed",
    }  # fmt: skip
    assert items[3] == {"id": "in_s1_3", "type": "function_call_output", "call_id": "call_1", "output": '{"ok": true}'}
    assert (items[4]["role"], items[4]["content"]) == ("developer", [{"type": "input_text", "text": "Be brief."}])


def test_an_assistant_message_of_tool_calls_only_lists_no_empty_message() -> None:
    calls_only = ChatMessage(role="assistant", content="", tool_calls=(ToolCall(id="c", name="g", arguments="1"),))
    assert [item["type"] for item in input_items("s", (calls_only,))] == ["function_call"]


def test_a_listing_is_newest_first_by_default_and_pages_with_after() -> None:
    items = input_items("s", CONVERSATION)
    first = listing(items, Page(limit=2))
    assert [item["id"] for item in first["data"]] == ["in_s_4", "in_s_3"]
    assert (first["first_id"], first["last_id"], first["has_more"]) == ("in_s_4", "in_s_3", True)
    rest = listing(items, Page(limit=20, after="in_s_3"))
    assert [item["id"] for item in rest["data"]] == ["in_s_2", "in_s_1", "in_s_0"] and rest["has_more"] is False
    assert [item["id"] for item in listing(items, Page(order="asc", limit=1))["data"]] == ["in_s_0"]


def test_an_empty_listing_has_no_first_or_last_id() -> None:
    assert listing([], Page()) == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}


@pytest.mark.parametrize(
    ("limit", "order", "after"),
    [("0", None, None), (str(MAX_LIMIT + 1), None, None), ("ten", None, None), (None, "newest", None)],
)
def test_a_bad_limit_or_order_is_a_bad_request(limit: str | None, order: str | None, after: str | None) -> None:
    with pytest.raises(BadRequest) as caught:
        Page.parse(limit, order, after)
    assert caught.value.code == ErrorCode.BAD_REQUEST


def test_after_an_item_the_response_does_not_have_is_a_bad_request() -> None:
    with pytest.raises(BadRequest) as caught:
        listing(input_items("s", CONVERSATION), Page(after="in_other_0"))
    assert caught.value.code == ErrorCode.BAD_REQUEST


def test_a_page_from_the_query_keeps_its_values() -> None:
    assert Page.parse("5", "asc", "in_s_1") == Page(limit=5, order="asc", after="in_s_1")
    assert Page.parse(None, None, None) == Page()
