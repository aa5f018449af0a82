"""Which request parameters the ``transformers`` engine honours, as keyword arguments of ``generate`` (sans-I/O).

It generates text only, greedily unless ``temperature`` asks for sampling.  It maps ``temperature``, ``top_p``,
``top_k`` and ``repetition_penalty`` (a vendor field) onto ``generate``; ``n`` of 1 and the fields that do not
shape generation (``user``, ``metadata``, ``store``) are accepted and change nothing.  Any other parameter given
(``tools``, ``stop``, ``seed``, ``response_format``, ``reasoning_effort``, penalties, ``logprobs``, a text
completion's ``suffix`` and ``echo``...) cannot be honoured: admission refuses it (the engine announces
:data:`ACCEPTED_PARAMETERS`), and a stream that reaches the engine anyway fails with ``unsupported_parameter``
naming it, rather than silently doing something else.
A request that set no ``max_tokens`` ends at the model's own limit (:func:`own_max_new_tokens`).
"""

from __future__ import annotations

from typing import Any

from tokenrelay.runner.engines.base import EngineError
from tokenrelay.wire.content import JsonObject
from tokenrelay.wire.errors import ErrorCode

DEFAULT_MAX_NEW_TOKENS = 1024
"""The engine's own limit for a request that set no ``max_tokens`` when the model's generation config names no
``max_new_tokens`` of its own."""
SAMPLING_PARAMETERS = {"temperature": float, "top_p": float, "top_k": int, "repetition_penalty": float}
"""Parameters passed to ``generate`` under the same name, with the type each must have."""
NEUTRAL_PARAMETERS = frozenset({"user", "metadata", "store"})
"""Parameters that do not shape what is generated: accepted and ignored."""
ACCEPTED_PARAMETERS = frozenset(SAMPLING_PARAMETERS) | NEUTRAL_PARAMETERS | {"n"}
"""Every parameter :func:`generate_kwargs` can accept (``n`` with the value 1 only): what the engine announces, so
admission refuses any other before a runner takes the stream."""


def generate_kwargs(params: JsonObject) -> dict[str, Any]:
    """``generate``'s keyword arguments for ``params``; :class:`EngineError` ``unsupported_parameter`` otherwise."""
    kwargs: dict[str, Any] = {"do_sample": False}
    for name, value in params.items():
        if value is None or name in NEUTRAL_PARAMETERS or (name == "n" and value == 1):
            continue
        kind = SAMPLING_PARAMETERS.get(name)
        if kind is None:
            raise EngineError(
                str(ErrorCode.UNSUPPORTED_PARAMETER), f"the transformers engine cannot honour the parameter {name!r}"
            )
        wrong_type = not isinstance(value, int | float) or (kind is int and not isinstance(value, int))
        if isinstance(value, bool) or wrong_type:
            raise EngineError(str(ErrorCode.UNSUPPORTED_PARAMETER), f"{name} must be a {kind.__name__}, not {value!r}")
        kwargs[name] = kind(value)
    temperature = kwargs.get("temperature")
    if temperature is not None and temperature <= 0:
        del kwargs["temperature"]  # 0 asks for greedy decoding, which is what do_sample=False does
    elif any(name in kwargs for name in SAMPLING_PARAMETERS if name != "repetition_penalty"):
        kwargs["do_sample"] = True
    return kwargs


def own_max_new_tokens(generation_config: Any, *, default_max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS) -> int:
    """The engine's own limit for a request that set no ``max_tokens``: the ``max_new_tokens`` of the model's
    generation config (``generation_config.json``), else ``default_max_new_tokens``."""
    value = getattr(generation_config, "max_new_tokens", None)
    return value if type(value) is int and value > 0 else default_max_new_tokens
