"""OpenAI's Responses API, the request side, sans-I/O: a ``POST /v1/responses`` body as a :class:`ResponseRequest`,
the :class:`StartRequest` that admits its stream, and the assistant turn an earlier response's events make.

Every top-level field is acted on, converted into ``params`` (the OpenAI chat shape the engine takes), echoed on the
Response object, or refused: ``bad_request`` naming the field for a malformed one or a chat field that has a
Responses name of its own, ``unsupported_parameter`` for a Responses feature tokenrelay cannot serve (built-in and
MCP tools, conversations, saved prompts, moderation, file and audio inputs, ``include``, ``truncation: "auto"``).
Fields the Responses API does not define (vendor fields such as ``top_k``) pass into ``params`` as sent, as on the
chat path; the admitting gateway checks ``params`` as it checks a chat request's.

Input items become chat messages: a message keeps its role, its text parts (``input_text``, ``output_text``,
``refusal``) become text and ``input_image`` an image; a ``function_call`` becomes a tool call of an assistant
message (consecutive calls, and the assistant message right before them, make one message, as chat needs); a
``function_call_output`` becomes a ``tool`` message.  ``reasoning`` items are accepted and left out of the prompt:
clients pass a response's whole output back as the next input, and chat templates drop earlier turns' reasoning.

``stream_options.include_obfuscation`` is accepted but streamed events never carry OpenAI's ``obfuscation``
padding: it hides event sizes from an observer of the encrypted traffic and changes no content.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any

from tokenrelay.streamer.compat.common import Collector
from tokenrelay.streamer.compat.openai import optional_int, optional_model
from tokenrelay.wire.content import ChatMessage, ContentPart, JsonObject, ToolCall
from tokenrelay.wire.errors import BadRequest, UnsupportedParameter
from tokenrelay.wire.messages import StartRequest, StreamEvent

MAX_METADATA_KEYS = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512
"""OpenAI's limits on ``metadata``: more keys, or a longer key or value, is ``bad_request``."""

ROLES = frozenset({"user", "system", "developer", "assistant"})
"""The roles a Responses input message may have (a tool's answer is a ``function_call_output`` item)."""
TOOL_CHOICES = frozenset({"none", "auto", "required"})
REASONING_SUMMARIES = frozenset({"auto", "concise", "detailed"})

PASSED_FIELDS = frozenset(
    {
        "temperature", "top_p", "parallel_tool_calls", "user", "safety_identifier",
        "prompt_cache_key", "prompt_cache_retention", "prompt_cache_options", "service_tier",
    }
)  # fmt: skip
"""Responses fields the chat API has with the same name and meaning: passed into ``params`` as sent."""

REFUSED_FIELDS: dict[str, str] = {
    "conversation": "tokenrelay keeps no conversations; pass previous_response_id or the whole input",
    "prompt": "saved prompt templates are not served",
    "moderation": "moderation is not run",
    "context_management": "context compaction is not run",
    "background_options": "background completion windows are not served",
    "access_programs": "access programs are not served",
    "image": "request-level image options are not served",
}
"""Responses features that change the response and that tokenrelay cannot honour: ``unsupported_parameter`` when
set (``null`` or empty is accepted), with the reason."""

CHAT_FIELDS: dict[str, str] = {
    "messages": "input",
    "max_tokens": "max_output_tokens",
    "max_completion_tokens": "max_output_tokens",
    "response_format": "text.format",
    "reasoning_effort": "reasoning.effort",
    "verbosity": "text.verbosity",
}
"""Chat fields the Responses API names otherwise: ``bad_request`` pointing to the Responses name, so that the two
never disagree in one request."""

OWNED_FIELDS = frozenset(
    {
        "model", "input", "instructions", "max_output_tokens", "stream", "stream_options", "background", "store",
        "previous_response_id", "tools", "tool_choice", "reasoning", "text", "include", "truncation", "metadata",
        "max_tool_calls", "top_logprobs",
    }
)  # fmt: skip
"""The Responses fields acted on here (converted, echoed or checked) rather than passed on as sent."""

_RESPONSES_FIELDS = OWNED_FIELDS | PASSED_FIELDS | REFUSED_FIELDS.keys()


@dataclass(frozen=True, slots=True)
class ResponseRequest:
    """A validated ``POST /v1/responses`` body."""

    model: str | None
    input: tuple[ChatMessage, ...]
    """The request's input items as chat messages (``instructions`` not among them)."""
    instructions: str | None
    max_output_tokens: int | None
    params: JsonObject
    """Generation parameters in the OpenAI chat shape, for the engine (as :attr:`StartRequest.params`)."""
    stream: bool
    background: bool
    store: bool
    """Whether the response is kept for retrieval and ``previous_response_id`` (OpenAI's default: ``True``)."""
    previous_response_id: str | None
    echo: JsonObject
    """The request's fields a Response object repeats, with OpenAI's defaults filled in."""


def parse_response_request(obj: dict[str, Any]) -> ResponseRequest:
    """A ``POST /v1/responses`` body as a :class:`ResponseRequest`; ``bad_request`` naming the field for malformed
    input, ``unsupported_parameter`` for a Responses feature tokenrelay cannot serve."""
    _refuse_fields(obj)
    stream, background = _flag(obj, "stream", default=False), _flag(obj, "background", default=False)
    store = _flag(obj, "store", default=True)
    if background and not store:
        raise BadRequest("background requires store: true (a background response is kept until it is read)")
    _stream_options(obj.get("stream_options"), stream=stream)
    messages = _input(obj.get("input"))
    instructions = _optional_string(obj, "instructions")
    max_output_tokens = optional_int("max_output_tokens", obj.get("max_output_tokens"))
    previous = _optional_string(obj, "previous_response_id")
    params, echo = _generation(obj)
    echo |= {
        "instructions": instructions,
        "max_output_tokens": max_output_tokens,
        "max_tool_calls": optional_int("max_tool_calls", obj.get("max_tool_calls")),
        "top_logprobs": optional_int("top_logprobs", obj.get("top_logprobs")),
        "truncation": _truncation(obj.get("truncation")),
        "metadata": _metadata(obj.get("metadata")),
        **{name: _optional_string(obj, name) for name in ("user", "safety_identifier", "prompt_cache_key")},
        "previous_response_id": previous,
        "store": store,
        "background": background,
    }
    return ResponseRequest(
        model=optional_model(obj),
        input=messages,
        instructions=instructions,
        max_output_tokens=max_output_tokens,
        params=params,
        stream=stream,
        background=background,
        store=store,
        previous_response_id=previous,
        echo=echo,
    )


def start_request(request: ResponseRequest, earlier: tuple[ChatMessage, ...] = ()) -> StartRequest:
    """The request that admits the response's stream: the instructions as a ``system`` message (when given), then
    ``earlier`` (the conversation of the previous response), then the request's input."""
    system = (ChatMessage(role="system", content=request.instructions),) if request.instructions else ()
    return StartRequest(
        messages=(*system, *earlier, *request.input),
        max_tokens=request.max_output_tokens,
        model=request.model,
        params=dict(request.params),
    )


def assistant_turn(events: Iterable[StreamEvent]) -> tuple[ChatMessage, ...]:
    """The assistant message an earlier response's stream events make: its text joined, its tool calls each with the
    id and name of its first fragment and its arguments joined; reasoning left out; ``()`` with neither."""
    collector = Collector()
    for event in events:
        collector.event(event)
    text = collector.text("text")
    calls = tuple(
        ToolCall(id=block.id or "", name=block.name or "", arguments=block.text()) for block in collector.tool_calls()
    )
    if not text and not calls:
        return ()
    return (ChatMessage(role="assistant", content=text, tool_calls=calls),)


# -- top-level fields


def _refuse_fields(obj: dict[str, Any]) -> None:
    for name, reason in REFUSED_FIELDS.items():
        if obj.get(name) not in (None, {}, []):
            raise UnsupportedParameter(f"{name} is not supported: {reason}")
    for name, instead in CHAT_FIELDS.items():
        if name in obj:
            raise BadRequest(f"{name} is a chat completions field; the Responses API takes {instead}")
    include = obj.get("include")
    if include is not None and not isinstance(include, list):
        raise BadRequest("include must be an array")
    if include:
        raise UnsupportedParameter(f"include is not supported: tokenrelay adds no extra output data ({include!r})")


def _flag(obj: dict[str, Any], name: str, *, default: bool) -> bool:
    value = obj.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be a boolean")
    return value


def _optional_string(obj: dict[str, Any], name: str) -> str | None:
    value = obj.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"{name} must be a string")
    return value


def _stream_options(value: Any, *, stream: bool) -> None:
    if value is None:
        return
    if not isinstance(value, dict):
        raise BadRequest("stream_options must be an object")
    if not stream:
        raise BadRequest("stream_options is only allowed with stream: true")
    if not isinstance(value.get("include_obfuscation", True), bool):
        raise BadRequest("stream_options.include_obfuscation must be a boolean")


def _truncation(value: Any) -> str:
    if value is None or value == "disabled":
        return "disabled"
    if value == "auto":
        raise UnsupportedParameter('truncation "auto" is not supported: tokenrelay never drops input items')
    raise BadRequest('truncation must be "disabled" or "auto"')


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequest("metadata must be an object of strings")
    if len(value) > MAX_METADATA_KEYS:
        raise BadRequest(f"metadata has {len(value)} keys; at most {MAX_METADATA_KEYS} are allowed")
    for key, item in value.items():
        if len(key) > MAX_METADATA_KEY_CHARS:
            raise BadRequest(f"metadata key {key[:16]!r}... is over {MAX_METADATA_KEY_CHARS} characters")
        if not isinstance(item, str) or len(item) > MAX_METADATA_VALUE_CHARS:
            raise BadRequest(f"metadata.{key} must be a string of at most {MAX_METADATA_VALUE_CHARS} characters")
    return dict(value)


# -- generation parameters


def _generation(obj: dict[str, Any]) -> tuple[JsonObject, JsonObject]:
    """The request's generation parameters in the chat shape, and what a Response echoes of them."""
    params = {key: value for key, value in obj.items() if key not in _RESPONSES_FIELDS}
    params |= {key: obj[key] for key in sorted(PASSED_FIELDS) if obj.get(key) is not None}
    tools = _tools(obj.get("tools"))
    if tools is not None:
        params["tools"] = tools
    choice = _tool_choice(obj.get("tool_choice"))
    if choice is not None:
        params["tool_choice"] = choice
    echo = {
        "tools": obj.get("tools") or [],
        "tool_choice": obj.get("tool_choice") or "auto",
        "parallel_tool_calls": _or_default(obj, "parallel_tool_calls", True),
        "temperature": _or_default(obj, "temperature", 1.0),
        "top_p": _or_default(obj, "top_p", 1.0),
        "reasoning": _reasoning(obj.get("reasoning"), params),
        "text": _text(obj.get("text"), params),
    }
    return params, echo


def _or_default(obj: dict[str, Any], name: str, default: Any) -> Any:
    value = obj.get(name)
    return default if value is None else value


def _tools(value: Any) -> list[JsonObject] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise BadRequest("tools must be an array")
    return [_tool(f"tools[{i}]", tool) for i, tool in enumerate(value)]


def _tool(where: str, tool: Any) -> JsonObject:
    """A Responses function tool in the chat shape (``{"type": "function", "function": {...}}``)."""
    if not isinstance(tool, dict) or not isinstance(tool.get("type"), str):
        raise BadRequest(f'{where} must be an object with a "type" string')
    if tool["type"] != "function":
        raise UnsupportedParameter(f"{where}.type {tool['type']!r} is not supported: only function tools are")
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"{where}.name must be a non-empty string")
    callers = tool.get("allowed_callers") or ["direct"]
    if tool.get("defer_loading") or tool.get("output_schema") is not None or callers != ["direct"]:
        raise UnsupportedParameter(f"{where}: defer_loading, output_schema and programmatic callers are not supported")
    function = {"name": name} | {key: tool[key] for key in ("description", "parameters", "strict") if key in tool}
    return {"type": "function", "function": function}


def _tool_choice(value: Any) -> str | JsonObject | None:
    if value is None or (isinstance(value, str) and value in TOOL_CHOICES):
        return value
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise BadRequest('tool_choice must be "none", "auto", "required" or an object with a "type"')
    if value["type"] != "function":
        raise UnsupportedParameter(f"tool_choice.type {value['type']!r} is not supported: only function choices are")
    name = value.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest("tool_choice.name must be a non-empty string")
    return {"type": "function", "function": {"name": name}}


def _reasoning(value: Any, params: JsonObject) -> JsonObject:
    """``reasoning.effort`` as chat's ``reasoning_effort``; the echo's ``{"effort", "summary"}``."""
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise BadRequest("reasoning must be an object")
    effort = value.get("effort")
    if effort is not None:
        if not isinstance(effort, str):
            raise BadRequest("reasoning.effort must be a string")
        params["reasoning_effort"] = effort
    summary = value.get("summary") or value.get("generate_summary")  # the latter is the deprecated name
    if summary is not None and (not isinstance(summary, str) or summary not in REASONING_SUMMARIES):
        raise BadRequest('reasoning.summary must be "auto", "concise" or "detailed"')
    if value.get("context") not in (None, "auto", "current_turn"):
        raise UnsupportedParameter("reasoning.context: earlier turns' reasoning is always left out of the prompt")
    if value.get("mode") not in (None, "standard"):
        raise UnsupportedParameter(f"reasoning.mode {value['mode']!r} is not supported")
    return {"effort": effort, "summary": summary}


def _text(value: Any, params: JsonObject) -> JsonObject:
    """``text.format`` as chat's ``response_format``, ``text.verbosity`` as its ``verbosity``; the echo of ``text``."""
    value = {} if value is None else value
    if not isinstance(value, dict):
        raise BadRequest("text must be an object")
    fmt = value.get("format") or {"type": "text"}
    response_format = _response_format(fmt)
    if response_format is not None:
        params["response_format"] = response_format
    echo: JsonObject = {"format": fmt}
    verbosity = value.get("verbosity")
    if verbosity is not None:
        if not isinstance(verbosity, str):
            raise BadRequest("text.verbosity must be a string")
        params["verbosity"] = echo["verbosity"] = verbosity
    return echo


def _response_format(fmt: Any) -> JsonObject | None:
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise BadRequest(f'text.format.type must be "text", "json_schema" or "json_object", not {kind!r}')
    name, schema = fmt.get("name"), fmt.get("schema")
    if not isinstance(name, str) or not name:
        raise BadRequest("text.format.name must be a non-empty string")
    if not isinstance(schema, dict):
        raise BadRequest("text.format.schema must be an object (a JSON schema)")
    spec = {"name": name, "schema": schema} | {key: fmt[key] for key in ("description", "strict") if key in fmt}
    return {"type": "json_schema", "json_schema": spec}


# -- input items


def _input(value: Any) -> tuple[ChatMessage, ...]:
    if isinstance(value, str):
        return (ChatMessage(role="user", content=value),)
    if not isinstance(value, list) or not value:
        raise BadRequest("input must be a string or a non-empty array of items")
    messages: list[ChatMessage] = []
    for i, item in enumerate(value):
        _add_item(messages, f"input[{i}]", item)
    return tuple(messages)


def _add_item(messages: list[ChatMessage], where: str, item: Any) -> None:
    if not isinstance(item, dict):
        raise BadRequest(f"{where} must be an object")
    # Without a type, an item with a role is a message and one with only an id refers to a stored item.
    kind = item.get("type") or ("message" if "role" in item else "item_reference" if "id" in item else None)
    if kind == "message":
        messages.append(_message(where, item))
    elif kind == "function_call":
        _add_call(messages, _function_call(where, item))
    elif kind == "function_call_output":
        messages.append(_call_output(where, item))
    elif kind == "item_reference":
        raise UnsupportedParameter(f"{where}: item references are not supported; pass the item itself")
    elif kind != "reasoning":  # reasoning items stay out of the prompt (see the module's docstring)
        raise BadRequest(
            f"{where}.type {kind!r} is not an input item tokenrelay takes "
            "(message, function_call, function_call_output, reasoning)"
        )


def _add_call(messages: list[ChatMessage], call: ToolCall) -> None:
    """Add ``call`` to the assistant message just before it, or start one: chat wants one turn's calls together."""
    if messages and messages[-1].role == "assistant":
        messages[-1] = replace(messages[-1], tool_calls=(*messages[-1].tool_calls, call))
    else:
        messages.append(ChatMessage(role="assistant", tool_calls=(call,)))


def _message(where: str, item: JsonObject) -> ChatMessage:
    role = item.get("role")
    if not isinstance(role, str) or role not in ROLES:
        raise BadRequest(f'{where}.role must be "user", "system", "developer" or "assistant"')
    content = item.get("content")
    if isinstance(content, str):
        return ChatMessage(role=role, content=content)
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content must be a string or an array of content parts")
    return ChatMessage(role=role, content=tuple(_part(f"{where}.content[{j}]", p) for j, p in enumerate(content)))


_TEXT_FIELDS = {"input_text": "text", "output_text": "text", "refusal": "refusal"}
"""The content parts that are text, and the field that holds it."""


def _part(where: str, part: Any) -> ContentPart:
    kind = part.get("type") if isinstance(part, dict) else None
    if isinstance(kind, str) and kind in _TEXT_FIELDS:
        text = part.get(_TEXT_FIELDS[kind])
        if not isinstance(text, str):
            raise BadRequest(f"{where}.{_TEXT_FIELDS[kind]} must be a string")
        return ContentPart(type="text", text=text)
    if kind == "input_image":
        return _image(where, part)
    if kind in ("input_file", "input_audio"):
        raise UnsupportedParameter(f"{where}.type {kind!r} is not supported: file and audio inputs are not served")
    raise BadRequest(f"{where}.type {kind!r} is not a content part (input_text, output_text, refusal, input_image)")


def _image(where: str, part: JsonObject) -> ContentPart:
    url = part.get("image_url")
    if url is None and part.get("file_id") is not None:
        raise UnsupportedParameter(f"{where}.file_id is not supported: pass the image as image_url")
    if not isinstance(url, str) or not url:
        raise BadRequest(f"{where}.image_url must be a non-empty string")
    detail = part.get("detail")
    if detail is not None and not isinstance(detail, str):
        raise BadRequest(f"{where}.detail must be a string")
    return ContentPart(type="image_url", image_url=url, detail=detail)


def _function_call(where: str, item: JsonObject) -> ToolCall:
    for field in ("call_id", "name", "arguments"):
        if not isinstance(item.get(field), str):
            raise BadRequest(f"{where}.{field} must be a string")
    return ToolCall(id=item["call_id"], name=item["name"], arguments=item["arguments"])


def _call_output(where: str, item: JsonObject) -> ChatMessage:
    call_id = item.get("call_id")
    if not isinstance(call_id, str) or not call_id:
        raise BadRequest(f"{where}.call_id must be a non-empty string")
    return ChatMessage(role="tool", content=_output_text(f"{where}.output", item.get("output")), tool_call_id=call_id)


def _output_text(where: str, output: Any) -> str:
    """A function call's output: a string, or its ``input_text`` parts joined."""
    if isinstance(output, str):
        return output
    if not isinstance(output, list):
        raise BadRequest(f"{where} must be a string or an array of input_text parts")
    texts = []
    for j, part in enumerate(output):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_image", "input_file"):
            raise UnsupportedParameter(f"{where}[{j}].type {kind!r} is not supported: a tool's output is text only")
        if kind != "input_text" or not isinstance(part.get("text"), str):
            raise BadRequest(f"{where}[{j}] must be an input_text part with a text string")
        texts.append(part["text"])
    return "".join(texts)
