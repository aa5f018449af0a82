"""The systems the OpenAI and Anthropic SDK tests stream from: texts too long to end before a stop, and texts that
end by themselves."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tests.helpers import STOPPED_TOKENS
from tokenrelay.testing.procs import System, nats_server, system
from tokenrelay.testing.synthetic import synthetic_args

TOKENS_PER_S = 50
LENGTH_TOKENS = 100_000  # the synthetic text's natural length at `long_texts`: no text ends before its max_tokens
NATURAL_TOKENS = 60  # the natural length at `natural_texts`, whose texts end by themselves (1.2 s at 50 tokens/s)
MAX_TOKENS_LIMIT = STOPPED_TOKENS


@contextlib.contextmanager
def long_texts(nats_url: str) -> Iterator[System]:
    """A system on ``nats_url`` whose texts are ``LENGTH_TOKENS`` long, admitting up to ``MAX_TOKENS_LIMIT``."""
    runner = synthetic_args(tokens_per_s=TOKENS_PER_S, length_tokens=LENGTH_TOKENS)
    with system(nats_url, runner_args=runner, gateway_args=["--max-tokens-limit", str(MAX_TOKENS_LIMIT)]) as running:
        yield running


@contextlib.contextmanager
def natural_texts() -> Iterator[System]:
    """A system whose texts end by themselves after ``NATURAL_TOKENS`` (a NATS of its own: no other system's runner
    takes its streams)."""
    runner = synthetic_args(tokens_per_s=TOKENS_PER_S, length_tokens=NATURAL_TOKENS)
    with nats_server() as own, system(own.url, runner_args=runner) as running:
        yield running
