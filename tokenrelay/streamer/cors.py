"""Cross-origin reads of the streamer's API (Fetch standard, "CORS protocol").

A chat page is served by the gateway and reads its events from the streamer, another origin:
the browser lets the page see a response only if it carries ``Access-Control-Allow-Origin``,
and asks first (an ``OPTIONS`` preflight) before a request with a header that is not
CORS-safelisted (``Authorization``, ``Last-Event-ID``, a JSON ``Content-Type``).

What is granted is deliberately small: only paths under ``/v1/`` (never ``/metrics`` or the
health checks), no credentials (``Access-Control-Allow-Credentials`` is never sent, so cookies
and HTTP auth are never attached), and only the response headers a client needs.
:class:`CorsPolicy` decides (sans-I/O); :func:`install` wires it into an aiohttp application.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from tokenrelay.runtime.service import Handler

ANY_ORIGIN = "*"
CORS_PATH_PREFIX = "/v1/"
ALLOWED_METHODS = ("GET", "POST", "OPTIONS")
ALLOWED_HEADERS = ("Authorization", "Content-Type", "Last-Event-ID", "X-Api-Key")
EXPOSED_HEADERS = ("Retry-After", "X-Tokenrelay-Stream-Id")
"""Response headers a cross-origin page may read besides the safelisted ones (Content-Type...)."""
PREFLIGHT_MAX_AGE_S = 600
"""How long a browser may cache a preflight's answer."""


@dataclass(frozen=True, slots=True)
class CorsPolicy:
    """Which origins may read responses: ``("*",)`` for any, else exact origins (``https://chat.example``)."""

    allow_origins: tuple[str, ...] = (ANY_ORIGIN,)

    @property
    def any_origin(self) -> bool:
        """Whether every origin is allowed."""
        return ANY_ORIGIN in self.allow_origins

    def applies_to(self, path: str) -> bool:
        """Whether responses on ``path`` may be shared across origins at all."""
        return path.startswith(CORS_PATH_PREFIX)

    def response_headers(self, origin: str | None) -> dict[str, str]:
        """Headers for any response to a request from ``origin`` (none if it is not allowed)."""
        # With a list of origins the answer depends on the request's Origin: caches must key on it.
        headers = {} if self.any_origin else {"Vary": "Origin"}
        if origin is None:
            return headers
        if self.any_origin:
            headers["Access-Control-Allow-Origin"] = ANY_ORIGIN
        elif origin in self.allow_origins:
            headers["Access-Control-Allow-Origin"] = origin
        else:
            return headers
        headers["Access-Control-Expose-Headers"] = ", ".join(EXPOSED_HEADERS)
        return headers

    def preflight_headers(self, origin: str | None) -> dict[str, str]:
        """Headers for the answer to a preflight; without an allowed origin, the browser refuses the request."""
        headers = self.response_headers(origin)
        if "Access-Control-Allow-Origin" in headers:
            headers["Access-Control-Allow-Methods"] = ", ".join(ALLOWED_METHODS)
            headers["Access-Control-Allow-Headers"] = ", ".join(ALLOWED_HEADERS)
            headers["Access-Control-Max-Age"] = str(PREFLIGHT_MAX_AGE_S)
        return headers


def is_preflight(request: web.BaseRequest) -> bool:
    """An ``OPTIONS`` request a browser sends before a non-simple cross-origin request."""
    return (
        request.method == "OPTIONS"
        and "Origin" in request.headers
        and "Access-Control-Request-Method" in request.headers
    )


def install(app: web.Application, policy: CorsPolicy) -> None:
    """Answer preflights and add the CORS headers to every response under ``/v1/`` of ``app``.

    Headers are added when a response is prepared, not after its handler returns: an SSE
    response sends its headers long before the handler finishes.
    """

    @web.middleware
    async def preflight(request: web.Request, handler: Handler) -> web.StreamResponse:
        if is_preflight(request) and policy.applies_to(request.path):
            return web.Response(status=204, headers=policy.preflight_headers(request.headers.get("Origin")))
        return await handler(request)

    async def add_headers(request: web.Request, response: web.StreamResponse) -> None:
        if not policy.applies_to(request.path) or is_preflight(request):
            return
        for name, value in policy.response_headers(request.headers.get("Origin")).items():
            if name == "Vary" and "Vary" in response.headers:
                response.headers[name] = f"{response.headers[name]}, {value}"
            else:
                response.headers[name] = value

    app.middlewares.insert(0, preflight)
    app.on_response_prepare.append(add_headers)
