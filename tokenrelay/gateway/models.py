"""Which model a new stream is for, decided from what the runners announced (sans-I/O).

A job goes only to runners of its model (``tokenrelay.jobs.<model>``), so admission names the model first:

- a request that names a model served now gets it;
- one that names a model a runner announced before, but none serves now, is ``503 unavailable`` (it may come back);
- one that names a model no runner ever announced is ``404 model_not_found``;
- one that names none gets the only model served, or with several the gateway's ``--default-model``, else
  ``400 bad_request`` naming the models served.

A gateway that has heard no runner at all answers ``503 unavailable`` for every model before this is asked
(:meth:`~tokenrelay.gateway.dispatch.Dispatcher.check_admission`).
"""

from __future__ import annotations

from collections.abc import Callable, Collection

from tokenrelay.wire.errors import BadRequest, ModelNotFound, Unavailable


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
