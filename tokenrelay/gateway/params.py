"""Sans-I/O shape checks of a new stream's generation parameters (the OpenAI chat fields tokenrelay does not own).

Every field a client sends besides the ones tokenrelay owns (:data:`OWNED_FIELDS`) reaches the engine as sent, in
``params``; the fields named here are checked first, so a request an upstream would refuse is refused at admission
with ``bad_request`` naming the field, not mid-stream.  Fields not named here (vendor fields such as ``top_k``,
``logprobs``, ``chat_template_kwargs``) pass unchecked.  ``null`` is accepted for every optional field and passed on.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tokenrelay.runtime.config import DEFAULT_MAX_TOOLS
from tokenrelay.wire.content import JsonObject
from tokenrelay.wire.errors import BadRequest

OWNED_FIELDS = frozenset(
    {"model", "messages", "prompt", "stream", "stream_options", "max_tokens", "max_completion_tokens"}
)
"""The request fields tokenrelay itself acts on; every other field is passed on in ``params``."""
TOOL_CHOICES = frozenset({"none", "auto", "required"})
MAX_STOP_SEQUENCES = 4


def parse_params(obj: JsonObject, *, max_tools: int = DEFAULT_MAX_TOOLS) -> JsonObject:
    """The request's fields that tokenrelay does not own, as sent, once the known ones have their shape.

    More than ``max_tools`` tools is ``bad_request``.
    """
    params = {key: value for key, value in obj.items() if key not in OWNED_FIELDS}
    for name, check in _CHECKS.items():
        value = params.get(name)
        if value is not None:
            check(value)
    tools = _tools(params.get("tools"), max_tools)
    _tool_choice(params.get("tool_choice"), tools)
    return params


def _tools(value: Any, max_tools: int) -> frozenset[str]:
    """The names of the tools defined (empty without tools)."""
    if value is None:
        return frozenset()
    if not isinstance(value, list):
        raise BadRequest("tools must be an array of function tools")
    if len(value) > max_tools:
        raise BadRequest(f"{len(value)} tools; at most {max_tools} are allowed")
    names: set[str] = set()
    for i, tool in enumerate(value):
        where = f"tools[{i}]"
        if not isinstance(tool, dict) or tool.get("type") != "function":
            raise BadRequest(f'{where} must be an object with "type": "function"')
        function = tool.get("function")
        if not isinstance(function, dict):
            raise BadRequest(f"{where}.function must be an object")
        name = function.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"{where}.function.name must be a non-empty string")
        if name in names:
            raise BadRequest(f"{where}.function.name {name!r} is defined twice")
        names.add(name)
        description = function.get("description")
        if description is not None and not isinstance(description, str):
            raise BadRequest(f"{where}.function.description must be a string")
        parameters = function.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise BadRequest(f"{where}.function.parameters must be an object (a JSON schema)")
    return frozenset(names)


def _tool_choice(value: Any, tools: frozenset[str]) -> None:
    if value is None or value == "none":
        return
    if isinstance(value, str) and value in TOOL_CHOICES:
        if value == "required" and not tools:
            raise BadRequest('tool_choice "required" needs tools')
        return
    if not isinstance(value, dict) or value.get("type") != "function":
        raise BadRequest('tool_choice must be "none", "auto", "required" or {"type": "function", "function": ...}')
    function = value.get("function")
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name:
        raise BadRequest("tool_choice.function.name must be a non-empty string")
    if name not in tools:
        raise BadRequest(f"tool_choice.function.name {name!r} names no tool in tools")


def _number_in(name: str, low: float, high: float) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if isinstance(value, bool) or not isinstance(value, int | float) or not low <= value <= high:
            raise BadRequest(f"{name} must be a number from {low:g} to {high:g}")

    return check


def _boolean(name: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not isinstance(value, bool):
            raise BadRequest(f"{name} must be a boolean")

    return check


def _string(name: str) -> Callable[[Any], None]:
    def check(value: Any) -> None:
        if not isinstance(value, str) or not value:
            raise BadRequest(f"{name} must be a non-empty string")

    return check


def _seed(value: Any) -> None:
    if type(value) is not int:
        raise BadRequest("seed must be an integer")


def _stop(value: Any) -> None:
    if isinstance(value, str):
        return
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= MAX_STOP_SEQUENCES
        or not all(isinstance(item, str) and item for item in value)
    ):
        raise BadRequest(f"stop must be a string or an array of 1 to {MAX_STOP_SEQUENCES} non-empty strings")


def _response_format(value: Any) -> None:
    if not isinstance(value, dict) or not isinstance(value.get("type"), str) or not value["type"]:
        raise BadRequest('response_format must be an object with a "type" string')


def _n(value: Any) -> None:
    # One choice per stream: a stream carries one answer, so a second choice would have nowhere to go.
    if type(value) is not int or value != 1:
        raise BadRequest("n must be 1")


_CHECKS: dict[str, Callable[[Any], None]] = {
    "temperature": _number_in("temperature", 0, 2),
    "top_p": _number_in("top_p", 0, 1),
    "presence_penalty": _number_in("presence_penalty", -2, 2),
    "frequency_penalty": _number_in("frequency_penalty", -2, 2),
    "parallel_tool_calls": _boolean("parallel_tool_calls"),
    "reasoning_effort": _string("reasoning_effort"),
    "seed": _seed,
    "stop": _stop,
    "response_format": _response_format,
    "n": _n,
}
"""Shape checks of the known optional fields that stand alone (``tools`` and ``tool_choice`` are checked together)."""
