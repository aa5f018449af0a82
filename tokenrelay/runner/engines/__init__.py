"""Inference engines behind one small interface.

The interface (:class:`Engine`, :class:`GenerationRequest`, the pieces an engine yields: text, :class:`TextTail`,
:class:`Reasoning`, :class:`ToolCallFragment`; and :class:`EngineError`) lives in
:mod:`tokenrelay.runner.engines.base`; :func:`~tokenrelay.runner.engines.registry.make_engine` builds the engine a
configuration names.  The engines themselves are :mod:`.synthetic`, :mod:`.openai` and :mod:`.transformers` (the
last one needs torch).
"""

from __future__ import annotations

from tokenrelay.runner.engines.base import (
    Engine,
    EngineError,
    GenerationRequest,
    Piece,
    Reasoning,
    TextTail,
    ToolCallFragment,
)

__all__ = ["Engine", "EngineError", "GenerationRequest", "Piece", "Reasoning", "TextTail", "ToolCallFragment"]
