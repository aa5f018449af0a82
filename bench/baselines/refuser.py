"""The refuser: a server that answers every ``POST /v1/streams`` with ``503 overloaded`` and ``Retry-After: 1``.

The floor of rejection latency: what a burst of first ``POST``s costs when the server does nothing but
refuse them (no body parsed, no admission state, no NATS), on the same listen backlog and event loop as
tokenrelay's gateway.  :mod:`bench.overload` drives it with the same users as the gateway in the same
run, so the gateway's rejection latency is also reported as a ratio against it.

    python -m bench.baselines.refuser --port 8184
"""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

from bench.baselines import Metrics, add_ops_routes, error_response, serve
from tokenrelay.runtime.service import EVENT_LOOPS, LISTEN_BACKLOG, run_on_loop

DEFAULT_PORT = 8184
RETRY_AFTER_S = 1


async def refuse(_: web.Request) -> web.Response:
    """``POST /v1/streams``: always ``503 overloaded`` (the body is left unread, as the gateway does when full)."""
    response = error_response(503, "overloaded", "this server refuses every stream")
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


def app() -> web.Application:
    """``POST /v1/streams`` refused, plus ``/healthz`` and ``/metrics``."""
    application = web.Application()
    application.router.add_post("/v1/streams", refuse)
    add_ops_routes(application, Metrics())
    return application


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--event-loop", choices=EVENT_LOOPS, default="auto", help="(default: auto, as the gateway's)")
    parser.add_argument("--log-level", default="WARNING")
    args = parser.parse_args()
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    run_on_loop(serve(app(), args.host, args.port, backlog=LISTEN_BACKLOG), event_loop=args.event_loop)


if __name__ == "__main__":
    main()
