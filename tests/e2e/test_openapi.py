"""``openapi.yaml`` describes the gateway's and the streamer's public HTTP API, and the running system keeps to it.

- the document is valid OpenAPI (the official 3.1 meta-schema, through the validator schemathesis uses), every
  operation in it loads, and every example in it is valid against the schema it illustrates;
- the routes each app registers are exactly the operations the document gives that process (``HEAD``, which
  aiohttp adds to every ``GET``, the chat page ``/`` and ``/static/{name}`` aside);
- schemathesis, driven against a real system (nats-server, gateway, streamer, runner as processes, with API keys),
  finds no ``5xx``, no undocumented status, content type or header, and no body that breaks its schema, for every
  operation of both processes, with generated valid and invalid requests, and again with the path naming a real
  stream for the operations that take one.
"""

from __future__ import annotations

import json
import os
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema_rs
import pytest
import schemathesis
import yaml
from aiohttp import web
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import checks as st_checks
from schemathesis.core import NOT_SET
from schemathesis.core.result import Err
from schemathesis.specs.openapi.schemas import OpenApiSchema

import tokenrelay.gateway.app as gateway_app
import tokenrelay.streamer.app as streamer_app
from tokenrelay.runtime.config import GatewayConfig, StreamerConfig
from tokenrelay.testing.procs import NatsServer, System, nats_server, system

SPEC_PATH = Path(__file__).resolve().parents[2] / "openapi.yaml"
KEY = "tr-openapi-0123456789abcdef"
AUTH = {"Authorization": f"Bearer {KEY}"}
TOKEN_SECRET = "openapi-test-token-secret-0123456789abcdef"
MAX_TOKENS_LIMIT = 16
"""The test gateway's ``--max-tokens-limit``: with the runner at full speed every admitted stream ends at once, so
non-streamed compatible requests and readers of a real stream finish within a request timeout."""
EXAMPLES = int(os.environ.get("TOKENRELAY_OPENAPI_EXAMPLES", "15"))
"""Generated requests per operation and generation mode (valid, invalid)."""
REQUEST_TIMEOUT_S = 20.0
HTTP_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
UNDOCUMENTED = {("GET", "/"), ("GET", "/static/{name}")}
"""The gateway's chat page and its assets: not part of the API."""

CHECKS = [
    st_checks.not_a_server_error,
    st_checks.status_code_conformance,
    st_checks.content_type_conformance,
    st_checks.response_headers_conformance,
    st_checks.response_schema_conformance,
]


def _raw_spec() -> dict[str, Any]:
    spec = yaml.safe_load(SPEC_PATH.read_text())
    assert isinstance(spec, dict)
    return spec


def _operations(spec: dict[str, Any], role: str) -> set[tuple[str, str]]:
    """(method, path) of every operation tagged ``role`` or ``ops`` (served by both)."""
    found = set()
    for path, item in spec["paths"].items():
        for method in HTTP_METHODS:
            operation = item.get(method)
            if operation is not None and {role, "ops"} & set(operation.get("tags", ())):
                found.add((method.upper(), path))
    return found


SPEC = _raw_spec()


def _tags(method: str, path: str) -> set[str]:
    return set(SPEC["paths"][path][method.lower()].get("tags", ()))


TARGETS = sorted(("gateway", *op) for op in _operations(SPEC, "gateway")) + sorted(
    ("streamer", *op) for op in _operations(SPEC, "streamer")
)
ON_A_REAL_STREAM = [
    ("gateway", "GET", "/v1/streams/{id}"),
    ("gateway", "POST", "/v1/streams/{id}/stop"),
    ("streamer", "GET", "/v1/streams/{id}/events"),
]


# -- (a) the document -------------------------------------------------------------------------------------------


def test_the_document_is_valid_openapi_and_every_operation_loads() -> None:
    schema = schemathesis.openapi.from_dict(_raw_spec())
    schema.validate()  # the OpenAPI 3.1 meta-schema (jsonschema-rs); raises jsonschema_rs.ValidationError
    labels = set()
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # an operation that cannot load (a broken reference...)
            raise result.err()
        labels.add(result.ok().label)
    assert labels == {f"{method} {path}" for _, method, path in TARGETS}
    ids = [op["operationId"] for item in SPEC["paths"].values() for m, op in item.items() if m in HTTP_METHODS]
    assert len(ids) == len(set(ids)), "operationIds must be unique"


def _schema_validator(schema: dict[str, Any]) -> jsonschema_rs.Validator:
    """A validator for ``schema`` whose ``#/components/...`` references resolve in the document."""
    return jsonschema_rs.validator_for({**schema, "components": SPEC["components"]}, validate_formats=True)


def _examples() -> Iterator[tuple[str, dict[str, Any], Any]]:
    """(where, schema, example) for every example in the document, resolved references included."""

    def resolve(node: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in node and len(node) == 1:
            target: Any = SPEC
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node

    for name, schema in SPEC["components"]["schemas"].items():
        if "example" in schema:
            yield f"components/schemas/{name}", {"$ref": f"#/components/schemas/{name}"}, schema["example"]
    for name, parameter in SPEC["components"]["parameters"].items():
        if "example" in parameter:
            yield f"components/parameters/{name}", parameter["schema"], parameter["example"]
    responses = [(f"components/responses/{n}", r) for n, r in SPEC["components"]["responses"].items()]
    bodies: list[tuple[str, dict[str, Any]]] = []
    for path, item in SPEC["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            if "requestBody" in operation:
                bodies.append((f"{method.upper()} {path} request", operation["requestBody"]))
            for status, response in operation["responses"].items():
                responses.append((f"{method.upper()} {path} {status}", resolve(response)))
    for where, holder in responses + bodies:
        for media_type, content in holder.get("content", {}).items():
            if "schema" not in content or not media_type.endswith("json"):
                continue
            if "example" in content:
                yield f"{where} {media_type}", content["schema"], content["example"]
            for key, example in content.get("examples", {}).items():
                yield f"{where} {media_type} ({key})", content["schema"], resolve(example)["value"]


def test_every_example_in_the_document_is_valid_against_its_schema() -> None:
    examples = list(_examples())
    assert len(examples) > 20
    for where, schema, example in examples:
        errors = [error.message for error in _schema_validator(schema).iter_errors(example)]
        assert not errors, f"{where}: {errors}"


def test_every_native_error_response_is_the_one_error_schema() -> None:
    """Native operations answer every 4xx/5xx with ``Error``; the compatible APIs with their own API's shape."""
    for path, item in SPEC["paths"].items():
        for method, operation in item.items():
            if method not in HTTP_METHODS or path in {
                "/v1/chat/completions",
                "/v1/completions",
                "/v1/messages",
                "/v1/models",
                "/v1/models/{id}",
                "/v1/responses",
                "/v1/responses/{id}",
                "/v1/responses/{id}/cancel",
                "/v1/responses/{id}/input_items",
            }:
                continue
            for status, response in operation["responses"].items():
                if int(status) < 400:
                    continue
                ref = response.get("$ref")
                resolved = SPEC["components"]["responses"][ref.rsplit("/", 1)[1]] if ref else response
                schema = resolved["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/Error"}, f"{method.upper()} {path} {status}"


# -- (b) the document and the apps' routes ---------------------------------------------------------------------


async def _served_app(monkeypatch: pytest.MonkeyPatch, module: Any, config: Any) -> web.Application:
    """The application a role's ``run`` builds, captured where it would be served (nothing listens)."""
    apps: list[web.Application] = []

    async def capture(app: web.Application, host: str, port: int, **_: Any) -> None:
        apps.append(app)

    monkeypatch.setattr(module, "serve", capture)
    await module.run(config)
    assert len(apps) == 1
    return apps[0]


def _routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path pattern) of every route but ``HEAD`` (aiohttp adds one for each ``GET``)."""
    found = set()
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        if route.method != "HEAD":
            found.add((route.method, resource.canonical))
    return found - UNDOCUMENTED


async def test_the_document_has_exactly_the_routes_each_app_registers(
    nats: NatsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = await _served_app(monkeypatch, gateway_app, GatewayConfig(nats_url=nats.url))
    streamer = await _served_app(monkeypatch, streamer_app, StreamerConfig(nats_url=nats.url))
    assert _routes(gateway) == _operations(SPEC, "gateway")
    assert _routes(streamer) == _operations(SPEC, "streamer")


# -- (c) schemathesis against a running system ------------------------------------------------------------------


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    keys = tmp_path_factory.mktemp("openapi") / "keys"
    keys.write_text(f"openapi {KEY}\n")
    key_args = ["--api-keys-file", str(keys)]
    with (
        nats_server() as nats,
        system(
            nats.url,
            gateway_args=[*key_args, "--max-tokens-limit", str(MAX_TOKENS_LIMIT)],
            streamer_args=key_args,
            runner_args=["--synthetic-tokens-per-s", "0", "--synthetic-ttft-ms", "0"],
            env={"TOKENRELAY_TOKEN_SECRET": TOKEN_SECRET},
        ) as sut,
    ):
        yield sut


def _with_limit(node: Any) -> Any:
    """The document with ``max_tokens``' bound lowered to the test gateway's ``--max-tokens-limit``."""
    if isinstance(node, dict):
        return {k: MAX_TOKENS_LIMIT if k == "maximum" and v == 32768 else _with_limit(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_with_limit(v) for v in node]
    return node


@pytest.fixture(scope="module")
def schema() -> OpenApiSchema:
    return schemathesis.openapi.from_dict(_with_limit(_raw_spec()))


def _base_url(sut: System, role: str) -> str:
    return sut.gateway_url if role == "gateway" else sut.streamer_url


def _fuzz(schema: OpenApiSchema, base_url: str, method: str, path: str, **fixed: Any) -> None:
    """Generated valid and invalid requests for one operation; the first failing check fails the test."""
    operation = schema[path][method]
    strategy = st.one_of(
        operation.as_strategy(schemathesis.GenerationMode.POSITIVE, **fixed),
        operation.as_strategy(schemathesis.GenerationMode.NEGATIVE, **fixed),
    )

    @settings(
        max_examples=2 * EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.generate],  # no shrinking: the failure reports the request (as a curl command) as sent
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: schemathesis.Case[Any]) -> None:
        case.call_and_validate(base_url=base_url, headers=AUTH, checks=CHECKS, timeout=REQUEST_TIMEOUT_S)

    run()


@pytest.mark.slow
@pytest.mark.parametrize(("role", "method", "path"), TARGETS, ids=[f"{r}:{m} {p}" for r, m, p in TARGETS])
def test_generated_requests_get_documented_answers_and_no_server_error(
    running: System, schema: OpenApiSchema, role: str, method: str, path: str
) -> None:
    _fuzz(schema, _base_url(running, role), method, path)


def _start_stream(sut: System) -> str:
    request = urllib.request.Request(
        f"{sut.gateway_url}/v1/streams",
        data=json.dumps({"prompt": "openapi", "max_tokens": MAX_TOKENS_LIMIT}).encode(),
        headers={**AUTH, "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=REQUEST_TIMEOUT_S) as response:
        assert response.status == 201
        stream_id = json.loads(response.read())["id"]
    assert isinstance(stream_id, str)
    return stream_id


@pytest.mark.slow
@pytest.mark.parametrize(
    ("role", "method", "path"), ON_A_REAL_STREAM, ids=[f"{r}:{m} {p}" for r, m, p in ON_A_REAL_STREAM]
)
def test_generated_requests_about_a_real_stream_get_documented_answers(
    running: System, schema: OpenApiSchema, role: str, method: str, path: str
) -> None:
    stream_id = _start_stream(running)
    _fuzz(schema, _base_url(running, role), method, path, path_parameters={"id": stream_id})


SECURED = [(role, method, path) for role, method, path in TARGETS if "ops" not in _tags(method, path)]


@pytest.mark.slow
@pytest.mark.parametrize(("role", "method", "path"), SECURED, ids=[f"{r}:{m} {p}" for r, m, p in SECURED])
def test_a_request_without_a_key_gets_the_documented_401(
    running: System, schema: OpenApiSchema, role: str, method: str, path: str
) -> None:
    operation = schema[path][method]
    body: Any = {"prompt": "openapi", "messages": [{"role": "user", "content": "hi"}], "model": "m", "max_tokens": 1}
    case = operation.Case(
        path_parameters={"id": "0" * 32} if "{id}" in path else None,
        body=body if method == "POST" and "requestBody" in SPEC["paths"][path]["post"] else NOT_SET,
    )
    response = case.call(base_url=_base_url(running, role), timeout=REQUEST_TIMEOUT_S)
    assert response.status_code == 401
    assert response.headers["www-authenticate"][0].startswith("Bearer")
    case.validate_response(response, checks=CHECKS)
