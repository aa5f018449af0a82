"""Which model a new stream is for, decided from what the runners announced (sans-I/O).

A job goes only to runners of its model (``tokenrelay.jobs.<model>``), so admission names the model first:

- a request that names a model served now gets it;
- one that names a model a runner announced before, but none serves now, is ``503 unavailable`` (it may come back);
- one that names a model no runner ever announced is ``404 model_not_found``;
- one that names none gets the only model served, or with several the gateway's ``--default-model``, else
  ``400 bad_request`` naming the models served.

A gateway that has heard no runner at all answers ``503 unavailable`` for every model before this is asked
(:meth:`~tokenrelay.gateway.dispatch.Dispatcher.check_admission`).

Then the request's ``params`` are checked against what the model's runners announced they can honour
(:func:`check_params`): a field that no runner of the model accepts is ``400 unsupported_parameter`` at once, rather
than a stream that a runner would end with that error.  A runner that announces nothing accepts every field.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable

from tokenrelay.wire.content import JsonObject
from tokenrelay.wire.errors import BadRequest, ModelNotFound, Unavailable, UnsupportedParameter
from tokenrelay.wire.messages import RunnerHeartbeat


def choose_model(
    requested: str | None,
    *,
    served: Collection[str],
    knows: Callable[[str], bool],
    default_model: str | None = None,
) -> str:
    """The model of a stream that asked for ``requested`` (``None``: it named none), or why there is none.

    ``served``: the models of the runners not declared lost; ``knows``: whether a runner ever announced a model;
    ``default_model``: the model of a request that names none while several are served.
    """
    model = requested if requested is not None else _unnamed(served, default_model)
    if model in served:
        return model
    if knows(model):
        raise Unavailable(f"no runner of model {model!r} is available")
    raise ModelNotFound(f"no runner serves model {model!r}; served: {_listed(served)}")


def check_params(params: JsonObject, *, model: str, runners: Iterable[RunnerHeartbeat]) -> None:
    """Refuse ``params`` with ``unsupported_parameter`` when one of its fields is accepted by no runner of ``model``
    among ``runners`` (the registered ones), naming the field, the model and what its runners accept.

    A field set to ``null`` sets nothing (the engines skip it) and is let through; so is everything when no runner
    of ``model`` is registered (admission answers that case before).
    """
    serving = [beat for beat in runners if model in beat.served_models()]
    if not serving:
        return
    for name, value in params.items():
        if value is not None and not any(beat.accepts(name) for beat in serving):
            accepted = sorted({field for beat in serving for field in beat.accepts_params or ()})
            raise UnsupportedParameter(
                f"no runner of model {model!r} can honour the parameter {name!r}; "
                f"its runners accept: {', '.join(accepted) or 'none'}"
            )


def _unnamed(served: Collection[str], default_model: str | None) -> str:
    """The model of a request that names none."""
    if len(served) == 1:
        return next(iter(served))
    if default_model is not None:
        return default_model
    if not served:
        raise Unavailable("no runner is available")
    raise BadRequest(f"model is required: several models are served ({_listed(served)})")


def _listed(served: Collection[str]) -> str:
    return ", ".join(sorted(served)) or "none"


RAW_PROMPT_PROTOCOL = 3
"""The first protocol version whose runners read a job's raw ``prompt`` (an older one would see an empty chat)."""


def check_raw_prompt(*, model: str, runners: Iterable[RunnerHeartbeat]) -> None:
    """Refuse a text completion (a raw prompt) with ``unavailable`` while a runner of ``model`` speaks a protocol older
    than :data:`RAW_PROMPT_PROTOCOL`: its queue group could hand the job to that runner, which would drop the prompt."""
    old = sorted(beat.runner_id for beat in runners if model in beat.served_models() and beat.v < RAW_PROMPT_PROTOCOL)
    if old:
        raise Unavailable(
            f"runners of model {model!r} too old for a raw prompt (protocol < {RAW_PROMPT_PROTOCOL}): {', '.join(old)}"
        )
