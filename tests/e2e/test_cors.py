"""A page on the gateway's origin may read the streamer's events (CORS), and the gateway serves that page."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from multidict import CIMultiDictProxy

from tokenrelay.cli import main as cli
from tokenrelay.cli.supervisor import http_ok, plan
from tokenrelay.streamer.cors import CorsPolicy
from tokenrelay.testing.http import create_stream
from tokenrelay.testing.procs import NatsServer, Role, System, start_role, stop_process, system, wait_until

PAGE_ORIGIN = "http://chat.example:8080"
OTHER_ORIGIN = "http://elsewhere.example"


@pytest.fixture(scope="module")
def sut(nats: NatsServer) -> Iterator[System]:
    with system(nats.url, runner_args=["--synthetic-tokens-per-s", "0", "--synthetic-ttft-ms", "0"]) as running:
        yield running


@pytest.fixture(scope="module")
def listed_streamer(nats: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Role]:
    """A second streamer that lets only ``PAGE_ORIGIN`` read it."""
    logs = tmp_path_factory.mktemp("cors-streamer")
    role = start_role("streamer", nats.url, str(logs), "streamer-listed", ["--cors-allow-origin", PAGE_ORIGIN])
    try:
        wait_until(lambda: role.process.poll() is not None or http_ok(f"{role.url}/healthz"), what="streamer health")
        assert role.process.poll() is None, Path(logs, "streamer-listed.log").read_text()
        yield role
    finally:
        stop_process(role.process)


async def _request(
    method: str, url: str, headers: dict[str, str] | None = None
) -> tuple[int, CIMultiDictProxy[str], bytes]:
    async with aiohttp.ClientSession() as session, session.request(method, url, headers=headers) as response:
        return response.status, response.headers, await response.read()


def _preflight(origin: str, request_headers: str = "last-event-id") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": request_headers,
    }


def _listed(header: str) -> set[str]:
    return {item.strip().lower() for item in header.split(",")}


# ---- the policy (sans-I/O) ----


def test_policy_allowing_any_origin_answers_star_and_does_not_vary() -> None:
    headers = CorsPolicy(("*",)).response_headers(OTHER_ORIGIN)
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "Vary" not in headers


def test_policy_with_listed_origins_echoes_a_listed_origin_and_varies_on_origin() -> None:
    headers = CorsPolicy((PAGE_ORIGIN,)).response_headers(PAGE_ORIGIN)
    assert headers["Access-Control-Allow-Origin"] == PAGE_ORIGIN
    assert headers["Vary"] == "Origin"


def test_policy_grants_nothing_to_an_unlisted_origin_or_a_request_without_origin() -> None:
    policy = CorsPolicy((PAGE_ORIGIN,))
    assert policy.response_headers(OTHER_ORIGIN) == {"Vary": "Origin"}
    assert policy.preflight_headers(OTHER_ORIGIN) == {"Vary": "Origin"}
    assert policy.response_headers(None) == {"Vary": "Origin"}


def test_policy_preflight_allows_the_resume_auth_and_json_headers_but_never_credentials() -> None:
    headers = CorsPolicy().preflight_headers(PAGE_ORIGIN)
    assert {"get", "post"} <= _listed(headers["Access-Control-Allow-Methods"])
    assert {"last-event-id", "content-type", "authorization"} <= _listed(headers["Access-Control-Allow-Headers"])
    assert int(headers["Access-Control-Max-Age"]) > 0
    assert "Access-Control-Allow-Credentials" not in headers


def test_policy_applies_only_to_the_v1_api() -> None:
    policy = CorsPolicy()
    assert policy.applies_to("/v1/streams/abc/events")
    assert not policy.applies_to("/metrics")
    assert not policy.applies_to("/healthz")


# ---- the command line ----


def _streamer_args(*argv: str) -> argparse.Namespace:
    return cli.build_parser().parse_args(["streamer", *argv])


def test_cors_allow_origin_defaults_to_any_origin() -> None:
    assert cli.streamer_config(_streamer_args()).cors_allow_origins == ("*",)


def test_cors_allow_origin_is_repeatable_and_normalised_to_the_origin_browsers_send() -> None:
    args = _streamer_args("--cors-allow-origin", "HTTP://Chat.Example:8080/", "--cors-allow-origin", "https://b.test")
    assert cli.streamer_config(args).cors_allow_origins == ("http://chat.example:8080", "https://b.test")


@pytest.mark.parametrize("value", ["chat.example", "http://chat.example/path", "ftp://chat.example", "http://"])
def test_cors_allow_origin_rejects_what_is_not_an_origin(value: str) -> None:
    with pytest.raises(SystemExit):
        _streamer_args("--cors-allow-origin", value)


def test_up_forwards_every_cors_allow_origin_to_the_streamer() -> None:
    args = cli.build_parser().parse_args(["up", "--cors-allow-origin", PAGE_ORIGIN, "--cors-allow-origin", "https://b"])
    (streamer,) = [child for child in plan(args, "nats://127.0.0.1:4222") if child.name == "streamer"]
    flags = [streamer.argv[i + 1] for i, arg in enumerate(streamer.argv) if arg == "--cors-allow-origin"]
    assert flags == [PAGE_ORIGIN, "https://b"]


# ---- the streamer, for real ----


async def test_events_endpoint_answers_a_cross_origin_get_with_allow_origin(sut: System) -> None:
    created = await create_stream(sut.gateway_url, "cors get", max_tokens=5)
    status, headers, body = await _request("GET", created["events_url"], {"Origin": PAGE_ORIGIN})
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "x-tokenrelay-stream-id" in _listed(headers["Access-Control-Expose-Headers"])
    assert "Access-Control-Allow-Credentials" not in headers
    assert b"event: stop" in body


async def test_events_endpoint_answers_a_preflight_for_a_resume_header(sut: System) -> None:
    created = await create_stream(sut.gateway_url, "cors preflight", max_tokens=5)
    status, headers, _ = await _request(
        "OPTIONS", created["events_url"], _preflight(PAGE_ORIGIN, "last-event-id, authorization, content-type")
    )
    assert status == 204
    assert headers["Access-Control-Allow-Origin"] == "*"
    assert "get" in _listed(headers["Access-Control-Allow-Methods"])
    assert {"last-event-id", "content-type", "authorization"} <= _listed(headers["Access-Control-Allow-Headers"])
    assert "Access-Control-Allow-Credentials" not in headers


async def test_compatible_api_answers_a_preflight_for_a_json_post(sut: System) -> None:
    headers = {**_preflight(PAGE_ORIGIN, "content-type, authorization"), "Access-Control-Request-Method": "POST"}
    status, answer, _ = await _request("OPTIONS", f"{sut.streamer_url}/v1/chat/completions", headers)
    assert status == 204
    assert "post" in _listed(answer["Access-Control-Allow-Methods"])


async def test_error_responses_carry_allow_origin_so_a_page_can_read_the_error(sut: System) -> None:
    url = f"{sut.streamer_url}/v1/streams/{'0' * 32}/events"
    status, headers, _ = await _request("GET", url, {"Origin": PAGE_ORIGIN})
    assert status == 404
    assert headers["Access-Control-Allow-Origin"] == "*"


async def test_ops_endpoints_are_not_shared_across_origins(sut: System) -> None:
    for path in ("/metrics", "/healthz"):
        _, headers, _ = await _request("GET", f"{sut.streamer_url}{path}", {"Origin": PAGE_ORIGIN})
        assert "Access-Control-Allow-Origin" not in headers, path


async def test_a_streamer_with_listed_origins_shares_only_with_them(sut: System, listed_streamer: Role) -> None:
    created = await create_stream(sut.gateway_url, "cors listed", max_tokens=5)
    url = f"{listed_streamer.url}/v1/streams/{created['id']}/events"
    _, allowed, _ = await _request("GET", url, {"Origin": PAGE_ORIGIN})
    assert allowed["Access-Control-Allow-Origin"] == PAGE_ORIGIN
    assert "origin" in _listed(allowed["Vary"])
    _, refused, _ = await _request("GET", url, {"Origin": OTHER_ORIGIN})
    assert "Access-Control-Allow-Origin" not in refused
    _, preflight, _ = await _request("OPTIONS", url, _preflight(OTHER_ORIGIN))
    assert "Access-Control-Allow-Origin" not in preflight
    assert "Access-Control-Allow-Headers" not in preflight


# ---- the gateway serves the page ----


async def test_gateway_serves_the_chat_page_at_root_as_html(sut: System) -> None:
    status, headers, body = await _request("GET", f"{sut.gateway_url}/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert headers["Cache-Control"] == "no-cache"
    assert b'src="/static/app.js"' in body
    # The page may connect to itself (control socket) and to the streamer (events), nothing else.
    assert sut.streamer_url in headers["Content-Security-Policy"]


@pytest.mark.parametrize(
    ("name", "content_type"), [("app.js", "text/javascript"), ("style.css", "text/css")], ids=["js", "css"]
)
async def test_gateway_serves_the_page_assets_with_their_content_type(
    sut: System, name: str, content_type: str
) -> None:
    status, headers, body = await _request("GET", f"{sut.gateway_url}/static/{name}")
    assert status == 200
    assert headers["Content-Type"].split(";")[0] == content_type
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert body


@pytest.mark.parametrize("path", ["/static/nope.js", "/static/..%2Fapp.py", "/static/index.html%00"])
async def test_gateway_serves_nothing_else_under_static(sut: System, path: str) -> None:
    status, headers, _ = await _request("GET", f"{sut.gateway_url}{path}")
    assert status == 404
    assert headers["Content-Type"].startswith("application/json")
