"""A secured NATS: every role connects with user/password, a token, an nkey or TLS from ``TOKENRELAY_NATS_*``,
refuses to start on settings or credentials that cannot work, and runs with only the subjects
``deploy/nats-auth.conf`` grants it (deploy/nats-permissions.md)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import ssl
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

import nkeys
import openai
import orjson
import pytest
import trustme
from nats import errors as nats_errors
from nats.js.errors import ObjectNotFoundError
from openai.types.responses import Response
from websockets.asyncio.client import connect as ws_connect

from tests.e2e.test_drain import generating
from tests.helpers import STOPPED_TOKENS, eventually, eventually_true, export_feedback, wait_running
from tokenrelay.cli.supervisor import http_ok
from tokenrelay.runtime import natsio
from tokenrelay.runtime.natsauth import NatsConnectError, NatsSecurity, NatsSecurityError, refusal
from tokenrelay.runtime.responses import open_response_events
from tokenrelay.streamer.compat.response_events import stream_id_of
from tokenrelay.testing.http import create_stream, metric, post, wait_finished
from tokenrelay.testing.procs import NatsServer, nats_server, start_role, stop_process, system, wait_until
from tokenrelay.testing.sse import read_stream
from tokenrelay.testing.synthetic import expected_text
from tokenrelay.wire import codec, subjects
from tokenrelay.wire.messages import RunnerHeartbeat

AUTH_CONF = Path(__file__).resolve().parents[2] / "deploy" / "nats-auth.conf"
ROLES = ("gateway", "runner", "streamer", "feedback")
ROLE_EXIT_TIMEOUT_S = 20.0
TLS_SERVER_NAME = "nats.tokenrelay.test"
"""The only name on the test server's certificate: connecting to 127.0.0.1 needs TOKENRELAY_NATS_TLS_HOSTNAME."""


# --- settings, without a server ------------------------------------------------------------------------------------


def _write(directory: Path, name: str, text: str | bytes) -> str:
    path = directory / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return str(path)


def _user_seed() -> tuple[bytes, str]:
    """A fresh nkey user: (seed ``SU...``, public key ``U...``)."""
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    return bytes(seed), nkeys.from_seed(bytearray(seed)).public_key.decode()


def test_no_variables_mean_an_open_plain_text_connection() -> None:
    security = NatsSecurity.from_env({"PATH": "/usr/bin"})
    assert security == NatsSecurity()
    assert security.connect_options() == {}
    assert security.describe() == "no credentials"


def test_user_and_password_variables_become_the_user_and_password_options() -> None:
    security = NatsSecurity.from_env({"TOKENRELAY_NATS_USER": "gw", "TOKENRELAY_NATS_PASSWORD": "s3cret"})
    assert security.connect_options() == {"user": "gw", "password": "s3cret"}
    assert "s3cret" not in repr(security) and "s3cret" not in security.describe()


def test_a_token_variable_becomes_the_token_option_and_stays_out_of_repr() -> None:
    security = NatsSecurity.from_env({"TOKENRELAY_NATS_TOKEN": "tok-123"})
    assert security.connect_options() == {"token": "tok-123"}
    assert "tok-123" not in repr(security)


def test_empty_variables_count_as_unset() -> None:
    environ = {"TOKENRELAY_NATS_USER": "", "TOKENRELAY_NATS_PASSWORD": "", "TOKENRELAY_NATS_TLS_CA_FILE": ""}
    assert NatsSecurity.from_env(environ) == NatsSecurity()


def test_an_nkey_seed_file_and_a_creds_file_are_passed_by_path(tmp_path: Path) -> None:
    seed, _ = _user_seed()
    seed_file = _write(tmp_path, "user.nk", seed)
    creds_file = _write(tmp_path, "user.creds", "-----BEGIN NATS USER JWT-----\n")
    assert NatsSecurity(nkeys_seed=seed_file).connect_options() == {"nkeys_seed": seed_file}
    assert NatsSecurity(creds=creds_file).connect_options() == {"user_credentials": creds_file}


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"TOKENRELAY_NATS_PASSWORD": "p"}, "TOKENRELAY_NATS_PASSWORD is set without TOKENRELAY_NATS_USER"),
        ({"TOKENRELAY_NATS_USER": "u"}, "TOKENRELAY_NATS_USER is set without TOKENRELAY_NATS_PASSWORD"),
        (
            {"TOKENRELAY_NATS_USER": "u", "TOKENRELAY_NATS_PASSWORD": "p", "TOKENRELAY_NATS_TOKEN": "t"},
            "set only one way to authenticate to NATS, not TOKENRELAY_NATS_USER and TOKENRELAY_NATS_TOKEN",
        ),
        (
            {"TOKENRELAY_NATS_TLS_CERT_FILE": "c"},
            "TOKENRELAY_NATS_TLS_CERT_FILE is set without TOKENRELAY_NATS_TLS_KEY",
        ),
        ({"TOKENRELAY_NATS_TLS_KEY_FILE": "k"}, "TOKENRELAY_NATS_TLS_KEY_FILE is set without"),
    ],
)
def test_incomplete_or_contradictory_settings_are_refused_naming_the_variables(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(NatsSecurityError, match=re.escape(message)):
        NatsSecurity.from_env(environ)


@pytest.mark.parametrize(
    "variable",
    [
        "TOKENRELAY_NATS_NKEY_SEED_FILE",
        "TOKENRELAY_NATS_CREDS_FILE",
        "TOKENRELAY_NATS_TLS_CA_FILE",
    ],
)
def test_a_file_variable_naming_no_file_is_refused(variable: str, tmp_path: Path) -> None:
    missing = str(tmp_path / "missing.pem")
    with pytest.raises(NatsSecurityError, match=re.escape(f"{variable}: no such file: {missing}")):
        NatsSecurity.from_env({variable: missing})


def test_a_tls_key_naming_no_file_is_refused(tmp_path: Path) -> None:
    cert = _write(tmp_path, "client.pem", "x")
    with pytest.raises(NatsSecurityError, match="TOKENRELAY_NATS_TLS_KEY_FILE: no such file"):
        NatsSecurity(tls_cert=cert, tls_key=str(tmp_path / "nope.key"))


def test_a_seed_file_that_holds_no_nkey_seed_is_refused(tmp_path: Path) -> None:
    not_a_seed = _write(tmp_path, "user.nk", "hunter2\n")
    with pytest.raises(NatsSecurityError, match="does not hold an nkey seed"):
        NatsSecurity(nkeys_seed=not_a_seed)


def test_tls_files_give_a_context_that_verifies_the_server_and_presents_the_client_certificate(
    tmp_path: Path,
) -> None:
    ca = trustme.CA()
    client = ca.issue_cert("tokenrelay-runner")
    ca_file = _write(tmp_path, "ca.pem", ca.cert_pem.bytes())
    cert_file = _write(tmp_path, "client.pem", client.cert_chain_pems[0].bytes())
    key_file = _write(tmp_path, "client.key", client.private_key_pem.bytes())
    security = NatsSecurity.from_env(
        {
            "TOKENRELAY_NATS_TLS_CA_FILE": ca_file,
            "TOKENRELAY_NATS_TLS_CERT_FILE": cert_file,
            "TOKENRELAY_NATS_TLS_KEY_FILE": key_file,
            "TOKENRELAY_NATS_TLS_HOSTNAME": TLS_SERVER_NAME,
        }
    )
    options = security.connect_options()
    assert set(options) == {"tls", "tls_hostname"} and options["tls_hostname"] == TLS_SERVER_NAME
    context = options["tls"]
    assert isinstance(context, ssl.SSLContext)
    assert context.verify_mode is ssl.CERT_REQUIRED and context.check_hostname
    assert len(context.get_ca_certs()) == 1, "only the given CA is trusted, not the system's store"
    assert security.describe() == "no credentials, TLS"


def test_a_tls_certificate_that_does_not_load_is_refused(tmp_path: Path) -> None:
    cert = _write(tmp_path, "client.pem", "not a certificate")
    key = _write(tmp_path, "client.key", "not a key")
    with pytest.raises(NatsSecurityError, match="not a usable certificate and key"):
        NatsSecurity(tls_cert=cert, tls_key=key).connect_options()


def test_refused_credentials_and_tls_failures_are_final_but_an_unreachable_broker_is_not() -> None:
    assert refusal(nats_errors.AuthorizationError()) is not None
    assert refusal(nats_errors.Error("nats: 'Authorization Violation'")) is not None
    assert refusal(ssl.SSLCertVerificationError(1, "certificate verify failed")) is not None
    assert refusal(ConnectionRefusedError(111, "Connection refused")) is None
    assert refusal(TimeoutError()) is None
    assert refusal(nats_errors.UnexpectedEOF()) is None


# --- real nats-server, one way to authenticate at a time ------------------------------------------------------------


@contextlib.contextmanager
def configured_nats(config: str) -> Iterator[NatsServer]:
    """A nats-server (JetStream, 127.0.0.1, free port) with ``config`` as its configuration file."""
    with tempfile.TemporaryDirectory(prefix="tokenrelay-nats-conf-") as directory:
        path = _write(Path(directory), "nats.conf", config)
        with nats_server(config_file=path) as server:
            yield server


async def _round_trip(security: NatsSecurity, url: str) -> None:
    """Connect as ``security`` says and prove the connection carries a request and its reply."""
    nc = await natsio.connect(url, name="security-test", security=security)
    try:

        async def answer(msg: object) -> None:
            await msg.respond(b"pong")  # type: ignore[attr-defined]

        await nc.subscribe("security.test", cb=answer)
        reply = await nc.request("security.test", b"ping", timeout=5)
        assert reply.data == b"pong"
    finally:
        await nc.close()


async def test_a_connection_with_user_and_password_works_and_a_wrong_password_fails_at_once() -> None:
    with configured_nats('authorization { user: "relay", password: "right-password" }') as server:
        await _round_trip(NatsSecurity(user="relay", password="right-password"), server.url)
        started = time.monotonic()
        with pytest.raises(NatsConnectError, match=r"as user 'relay' with a password: the server refused"):
            await natsio.connect(server.url, name="t", security=NatsSecurity(user="relay", password="wrong"))
        assert time.monotonic() - started < natsio.CONNECT_TIMEOUT_S, "a refusal is final, not retried"


async def test_a_connection_with_a_token_works_and_no_token_is_refused() -> None:
    token = secrets.token_urlsafe(24)
    with configured_nats(f'authorization {{ token: "{token}" }}') as server:
        await _round_trip(NatsSecurity.from_env({"TOKENRELAY_NATS_TOKEN": token}), server.url)
        with pytest.raises(NatsConnectError, match="refused the credentials"):
            await natsio.connect(server.url, name="t", security=NatsSecurity())


def _wait_ready(role_url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    def ready() -> bool:
        if process.poll() is not None:
            raise AssertionError(f"the role exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        return http_ok(f"{role_url}/readyz")

    wait_until(ready, what="the role to be ready on NATS")


def test_a_runner_process_connects_as_an_nkey_user_from_its_seed_file(tmp_path: Path) -> None:
    seed, public_key = _user_seed()
    seed_file = _write(tmp_path, "runner.nk", seed)
    with (
        configured_nats(f'authorization {{ users = [ {{ nkey: "{public_key}" }} ] }}') as server,
        tempfile.TemporaryDirectory(prefix="tokenrelay-test-logs-") as logs,
    ):
        role = start_role("runner", server.url, logs, "runner", env={"TOKENRELAY_NATS_NKEY_SEED_FILE": seed_file})
        try:
            _wait_ready(role.url, role.process, Path(logs, "runner.log"))
        finally:
            stop_process(role.process)
        assert role.process.returncode == 0, Path(logs, "runner.log").read_text(errors="replace")
        other_seed, _ = _user_seed()  # well formed, but not a user the server knows
        with pytest.raises(NatsConnectError, match="refused the credentials"):
            _connect_and_close(server.url, NatsSecurity(nkeys_seed=_write(tmp_path, "other.nk", other_seed)))


def _connect_and_close(url: str, security: NatsSecurity) -> None:
    """``natsio.connect`` from a synchronous test; closes the connection if it opens."""

    async def attempt() -> None:
        nc = await natsio.connect(url, name="t", security=security)
        await nc.close()

    asyncio.run(attempt())


class Tls:
    """A CA, a server certificate for :data:`TLS_SERVER_NAME` and a client certificate, as files."""

    def __init__(self, directory: Path) -> None:
        ca = trustme.CA()
        server = ca.issue_cert(TLS_SERVER_NAME)
        client = ca.issue_cert("tokenrelay-runner")
        self.ca = _write(directory, "ca.pem", ca.cert_pem.bytes())
        self.server_cert = _write(directory, "server.pem", b"".join(p.bytes() for p in server.cert_chain_pems))
        self.server_key = _write(directory, "server.key", server.private_key_pem.bytes())
        self.client_cert = _write(directory, "client.pem", b"".join(p.bytes() for p in client.cert_chain_pems))
        self.client_key = _write(directory, "client.key", client.private_key_pem.bytes())
        self.other_ca = _write(directory, "other-ca.pem", trustme.CA().cert_pem.bytes())

    def server_config(self) -> str:
        """TLS required for every client, and each must present a certificate signed by the CA."""
        return (
            f'tls {{ cert_file: "{self.server_cert}", key_file: "{self.server_key}", '
            f'ca_file: "{self.ca}", verify: true }}'
        )

    def env(self) -> dict[str, str]:
        return {
            "TOKENRELAY_NATS_TLS_CA_FILE": self.ca,
            "TOKENRELAY_NATS_TLS_CERT_FILE": self.client_cert,
            "TOKENRELAY_NATS_TLS_KEY_FILE": self.client_key,
            "TOKENRELAY_NATS_TLS_HOSTNAME": TLS_SERVER_NAME,
        }


def test_a_runner_process_connects_over_tls_with_a_client_certificate(tmp_path: Path) -> None:
    tls = Tls(tmp_path)
    with (
        configured_nats(tls.server_config()) as server,
        tempfile.TemporaryDirectory(prefix="tokenrelay-test-logs-") as logs,
    ):
        role = start_role("runner", server.url, logs, "runner", env=tls.env())
        try:
            _wait_ready(role.url, role.process, Path(logs, "runner.log"))
        finally:
            stop_process(role.process)
        assert role.process.returncode == 0


@pytest.mark.parametrize("mistake", ["a CA that did not sign it", "no TLS hostname: 127.0.0.1 is not on it"])
async def test_a_server_certificate_that_does_not_verify_fails_the_connection_at_once(
    tmp_path: Path, mistake: str
) -> None:
    tls = Tls(tmp_path)
    environ = tls.env()
    if mistake.startswith("a CA"):
        environ["TOKENRELAY_NATS_TLS_CA_FILE"] = tls.other_ca
    else:
        del environ["TOKENRELAY_NATS_TLS_HOSTNAME"]
    with configured_nats(tls.server_config()) as server:
        await _round_trip(NatsSecurity.from_env(tls.env()), server.url)
        with pytest.raises(NatsConnectError, match="the server's TLS certificate does not verify"):
            await asyncio.wait_for(natsio.connect(server.url, name="t", security=NatsSecurity.from_env(environ)), 20)


async def test_a_tls_server_that_verifies_clients_refuses_one_without_a_certificate(tmp_path: Path) -> None:
    tls = Tls(tmp_path)
    without_cert = {"TOKENRELAY_NATS_TLS_CA_FILE": tls.ca, "TOKENRELAY_NATS_TLS_HOSTNAME": TLS_SERVER_NAME}
    with configured_nats(tls.server_config()) as server, pytest.raises(NatsConnectError, match="TLS failed"):
        await asyncio.wait_for(natsio.connect(server.url, name="t", security=NatsSecurity.from_env(without_cert)), 20)


# --- a role must not start without NATS -----------------------------------------------------------------------------


def _exit_of_runner(nats_url: str, env: Mapping[str, str]) -> tuple[int, str]:
    """Start a runner with ``env``; return its exit status and output once it exits by itself."""
    with tempfile.TemporaryDirectory(prefix="tokenrelay-test-logs-") as logs:
        role = start_role("runner", nats_url, logs, "runner", env=env)
        try:
            role.process.wait(timeout=ROLE_EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise AssertionError("the runner kept running without NATS") from None
        finally:
            stop_process(role.process)
        assert not http_ok(f"{role.url}/healthz")
        return role.process.returncode, Path(logs, "runner.log").read_text(errors="replace")


def test_a_role_with_a_wrong_password_exits_1_with_one_clear_line_and_never_serves() -> None:
    with configured_nats('authorization { user: "relay", password: "right-password" }') as server:
        status, output = _exit_of_runner(
            server.url, {"TOKENRELAY_NATS_USER": "relay", "TOKENRELAY_NATS_PASSWORD": "wrong-password"}
        )
    assert status == 1
    assert "Traceback" not in output and "wrong-password" not in output
    assert (
        f"tokenrelay runner: cannot connect to NATS at {server.url} as user 'relay' with a password: "
        "the server refused the credentials (Authorization Violation)"
    ) in output.splitlines()


def test_a_role_with_incomplete_nats_settings_exits_2_naming_the_variables(nats: NatsServer) -> None:
    status, output = _exit_of_runner(nats.url, {"TOKENRELAY_NATS_PASSWORD": "orphan"})
    assert status == 2
    assert "Traceback" not in output and "orphan" not in output
    assert output.strip().splitlines()[-1] == (
        "tokenrelay runner: error: NATS settings: TOKENRELAY_NATS_PASSWORD is set without TOKENRELAY_NATS_USER"
    )


# --- the whole system, each role its own NATS user with only the subjects it needs ---------------------------------

LENGTH_TOKENS = 100_000
"""Every synthetic text runs this long unless max_tokens ends it first, so a stop always lands mid-stream."""
FAST_RUNNER = ["--synthetic-tokens-per-s", "100", "--synthetic-ttft-ms", "0", "--synthetic-length-tokens", "100000"]
GRACE_S = 0.3
UNREAD_GRACE_S = 0.5


def auth_config(passwords: Mapping[str, str]) -> str:
    """deploy/nats-auth.conf with each ``"<role-password>"`` placeholder filled in."""
    text = AUTH_CONF.read_text()
    for role, password in passwords.items():
        placeholder = f'"<{role}-password>"'
        assert placeholder in text, placeholder
        text = text.replace(placeholder, orjson.dumps(password).decode())
    assert re.search(r'password:\s*"<', text) is None, "a placeholder was left unfilled"
    return text


def role_credentials(role: str, passwords: Mapping[str, str]) -> dict[str, str]:
    return {"TOKENRELAY_NATS_USER": f"tokenrelay-{role}", "TOKENRELAY_NATS_PASSWORD": passwords[role]}


def violations(log_path: str) -> list[str]:
    return [line for line in Path(log_path).read_text(errors="replace").splitlines() if "Violation" in line]


async def test_every_role_works_end_to_end_as_its_own_user_with_only_its_documented_permissions() -> None:
    passwords = {role: secrets.token_urlsafe(18) for role in ROLES}
    with (
        configured_nats(auth_config(passwords)) as server,
        system(
            server.url,
            runner_args=FAST_RUNNER,
            streamer_args=["--disconnect-grace-s", str(GRACE_S)],
            # The gateway asks the streamers about every stream still running this long after its admission.
            gateway_args=["--unread-grace-s", str(UNREAD_GRACE_S)],
            role_env={role: role_credentials(role, passwords) for role in ("gateway", "runner", "streamer")},
        ) as sut,
    ):
        # Gateway -> jobs -> runner -> events -> streamer, and records in the KV bucket.
        created = await create_stream(sut.gateway_url, "secured", max_tokens=30)
        stream = await read_stream(created["events_url"])
        assert stream.text == expected_text("secured", 30, LENGTH_TOKENS)
        assert stream.terminal.event == "stop" and stream.terminal.json()["finish_reason"] == "length"
        # A late reader is served from JetStream history (direct get on the events stream).
        late = await read_stream(created["events_url"])
        assert late.text == stream.text

        # Stop over HTTP: gateway -> the runner's cancel subject -> reply.
        long = await create_stream(sut.gateway_url, "stop me", max_tokens=STOPPED_TOKENS)
        reader = asyncio.create_task(read_stream(long["events_url"]))
        await wait_running(sut.gateway_url, long["id"])  # its runner has it: the stop goes to the runner
        status, stopped = await post(long["stop_url"])
        assert status == 200 and stopped["finish_reason"] == "cancelled", stopped
        assert (await reader).terminal.json()["tokens"] == stopped["tokens"]

        # Every reader gone: the streamer probes the other streamers, then cancels through the gateways.
        abandoned = await create_stream(sut.gateway_url, "walk away", max_tokens=STOPPED_TOKENS)
        assert len((await read_stream(abandoned["events_url"], stop_after=3)).events) == 3
        final = await wait_finished(sut.gateway_url, abandoned["id"])
        assert final["finish_reason"] == "cancelled"

        # No reader ever: the admitting gateway asks the streamers (tokenrelay.readers.*), then stops it at its runner.
        unread = await create_stream(sut.gateway_url, "never read", max_tokens=STOPPED_TOKENS)
        final = await wait_finished(sut.gateway_url, unread["id"])
        assert (final["finish_reason"], final["cancel_reason"]) == ("cancelled", "disconnect")

        # A gateway asks a runner whose heartbeats stopped whether it is alive; the runner answers with one.
        heard, answered = await _ping_as_gateway(server, passwords)
        assert answered == heard

        # Feedback over the control WebSocket, stored in JetStream, read back by the export as its own user.
        stream_id = await _rate(sut.gateway_url)
        exported = export_feedback(server.url, role_credentials("feedback", passwords))
        assert [(item["stream_id"], item["rating"]) for item in exported] == [(stream_id, "up")]

        # The OpenAI-compatible API on the streamer: admission by a gateway over tokenrelay.api.*.
        client = openai.AsyncOpenAI(base_url=f"{sut.streamer_url}/v1", api_key="unused", max_retries=0)
        models = await client.models.list()
        assert [model.id for model in models.data] == ["synthetic"]
        chunks = [
            chunk
            async for chunk in await client.chat.completions.create(
                model="synthetic", messages=[{"role": "user", "content": "compat"}], max_tokens=12, stream=True
            )
        ]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == expected_text(
            "compat", 12, LENGTH_TOKENS
        )
        assert chunks[-1].choices[0].finish_reason == "length"

        assert violations(server.log_path) == [], "a role used a subject its user may not"
        await _a_runner_may_not_read_or_forge_what_is_not_its_own(server, passwords)


async def _ping_as_gateway(server: NatsServer, passwords: Mapping[str, str]) -> tuple[str, str]:
    """As the gateway's user: the runner id of a heartbeat, and that of the answer to pinging it."""
    gateway = NatsSecurity.from_env(role_credentials("gateway", passwords))
    nc = await natsio.connect(server.url, name="pinging-gateway", security=gateway)
    try:
        heartbeats = await nc.subscribe(subjects.RUNNER_HEARTBEAT)
        heard = codec.decode_as((await heartbeats.next_msg(timeout=5)).data, RunnerHeartbeat).runner_id
        reply = await nc.request(subjects.runner_ping(heard), b"", timeout=5)
    finally:
        await nc.close()
    return heard, codec.decode_as(reply.data, RunnerHeartbeat).runner_id


async def _rate(gateway_url: str) -> str:
    async with ws_connect(f"{gateway_url.replace('http', 'ws')}/v1/control") as ws:
        await ws.send(orjson.dumps({"type": "start", "prompt": "rate me", "max_tokens": 2}).decode())
        started = orjson.loads(await ws.recv())
        assert started["type"] == "started", started
        feedback = {"type": "feedback", "stream_id": started["stream_id"], "rating": "up", "comment": "ok"}
        await ws.send(orjson.dumps(feedback).decode())
        assert orjson.loads(await ws.recv())["type"] == "ack"
        return str(started["stream_id"])


async def _a_runner_may_not_read_or_forge_what_is_not_its_own(server: NatsServer, passwords: Mapping[str, str]) -> None:
    """Deny by default holds: the runner's user cannot read feedback or pose as a streamer asking for a start."""
    runner = NatsSecurity.from_env(role_credentials("runner", passwords))
    nc = await natsio.connect(server.url, name="not-a-runner", security=runner)
    try:
        await nc.subscribe("tokenrelay.feedback.*")
        await nc.publish("tokenrelay.api.start", b"{}")
        await nc.flush()
        await eventually_true(
            lambda: len(violations(server.log_path)) >= 2, what="nats-server to log both permission violations"
        )
    finally:
        await nc.close()
    refused = {
        re.sub(r".* - (\w+) Violation - Subject (\"[^\"]*\").*", r"\1 \2", line) for line in violations(server.log_path)
    }
    assert refused == {'Subscription "tokenrelay.feedback.*"', 'Publish "tokenrelay.api.start"'}
    assert all('"$G/user:tokenrelay-runner"' in line for line in violations(server.log_path))


# --- stored responses under the same users: the records' bucket and the events' object store -----------------------

BACKGROUND_CAP = 3
"""The background responses the key may hold in the stored-responses spec: it makes two, then fills the cap."""


async def test_stored_and_background_responses_work_with_only_the_documented_permissions() -> None:
    passwords = {role: secrets.token_urlsafe(18) for role in ROLES}
    with (
        configured_nats(auth_config(passwords)) as server,
        system(
            server.url,
            runner_args=FAST_RUNNER,
            streamer_args=["--max-background-responses-per-key", str(BACKGROUND_CAP)],
            # A background response with no reader outlives the gateway's unread check.
            gateway_args=["--unread-grace-s", str(UNREAD_GRACE_S)],
            role_env={role: role_credentials(role, passwords) for role in ("gateway", "runner", "streamer")},
        ) as sut,
    ):
        sdk = openai.AsyncOpenAI(base_url=f"{sut.streamer_url}/v1", api_key="unused", max_retries=0)

        # Stored and answered whole (the streamer declares both buckets and writes the record), then retrieved as
        # JSON, as a stream, and resumed after a sequence number (the record's get, the kept events' get).
        first = await sdk.responses.create(model="synthetic", input="kept", max_output_tokens=8)
        assert first.status == "incomplete" and first.output_text == expected_text("kept", 8, LENGTH_TOKENS)
        assert (await sdk.responses.retrieve(first.id)).output_text == first.output_text
        events = [event async for event in await sdk.responses.retrieve(first.id, stream=True)]
        assert events[-1].type == "response.incomplete"
        middle = events[len(events) // 2].sequence_number
        rest = [e async for e in await sdk.responses.retrieve(first.id, stream=True, starting_after=middle)]
        assert [e.sequence_number for e in rest] == [e.sequence_number for e in events if e.sequence_number > middle]

        # Chained: the earlier response's record and events make the conversation.
        second = await sdk.responses.create(
            model="synthetic", input="and then", previous_response_id=first.id, max_output_tokens=4
        )
        assert second.previous_response_id == first.id and second.status == "incomplete"

        # Background (the cap's count watches the key's records first), read by nobody, past the unread check.
        unread = await sdk.responses.create(
            model="synthetic", input="nobody reads", background=True, max_output_tokens=100
        )
        assert unread.status == "queued"
        done = await _finished(sdk, unread.id)
        assert done.status == "incomplete" and done.output_text == expected_text("nobody reads", 100, LENGTH_TOKENS)

        # Background, cancelled while its runner generates it.
        running = await sdk.responses.create(
            model="synthetic", input="cancel me", background=True, max_output_tokens=STOPPED_TOKENS
        )
        await wait_running(sut.gateway_url, _stream_id(running.id))
        cancelled = await sdk.responses.cancel(running.id)
        assert cancelled.status == "cancelled"
        assert (await sdk.responses.retrieve(running.id)).status == "cancelled"

        # Deleted: its record purged and its events deleted.
        doomed = await sdk.responses.create(model="synthetic", input="delete me", max_output_tokens=3)
        await sdk.responses.delete(doomed.id)
        with pytest.raises(openai.NotFoundError):
            await sdk.responses.retrieve(doomed.id)

        # The key holds two background responses: one more fills the cap, the next is refused.
        await sdk.responses.create(model="synthetic", input="third", background=True, max_output_tokens=3)
        with pytest.raises(openai.RateLimitError) as caught:
            await sdk.responses.create(model="synthetic", input="fourth", background=True, max_output_tokens=3)
        assert caught.value.code == "rate_limited"

        # The runner kept each finished response's events in the object store (not only the history has them).
        kept = await _kept_events(server, passwords, [first.id, second.id, unread.id, running.id, doomed.id])
        assert kept == {first.id: True, second.id: True, unread.id: True, running.id: True, doomed.id: False}
        assert _events_not_kept(Path(sut.log_dir, f"{sut.runners[0].name}.log")) == []

        assert violations(server.log_path) == [], "a role used a subject its user may not"
        await _a_runner_may_not_read_or_delete_response_records(server, passwords)


def _stream_id(response_id: str) -> str:
    stream_id = stream_id_of(response_id)
    assert stream_id is not None, response_id
    return stream_id


async def _finished(sdk: openai.AsyncOpenAI, response_id: str) -> Response:
    async def current() -> Response:
        return await sdk.responses.retrieve(response_id)

    return await eventually(current, lambda r: r.status not in ("queued", "in_progress"), what=f"{response_id} to end")


def _events_not_kept(runner_log: Path) -> list[str]:
    """The runner's warnings that a stored response's events could not be kept."""
    lines = runner_log.read_text(errors="replace").splitlines()
    return [line for line in lines if "could not be kept" in line or "no response store" in line]


async def _kept_events(server: NatsServer, passwords: Mapping[str, str], response_ids: list[str]) -> dict[str, bool]:
    """As the streamer's user: whether the events of each response are in the object store."""
    streamer = NatsSecurity.from_env(role_credentials("streamer", passwords))
    nc = await natsio.connect(server.url, name="events-check", security=streamer)
    try:
        store = await open_response_events(nc.jetstream())
        assert store is not None, "no events store was declared"
        kept: dict[str, bool] = {}
        for response_id in response_ids:
            try:
                info = await store.get_info(f"events-{_stream_id(response_id)}")
                kept[response_id] = not info.deleted and bool(info.size)
            except ObjectNotFoundError:
                kept[response_id] = False
        return kept
    finally:
        await nc.close()


RECORD_SUBJECTS_NOT_THE_RUNNERS = (
    f"$JS.API.STREAM.MSG.GET.KV_{subjects.RESPONSES_BUCKET}",  # read a record (nats-py's get)
    f"$JS.API.DIRECT.GET.KV_{subjects.RESPONSES_BUCKET}.$KV.{subjects.RESPONSES_BUCKET}.o0.fg.s1",  # or a direct get
    f"$KV.{subjects.RESPONSES_BUCKET}.o0.fg.s1",  # write or purge one
)


async def _a_runner_may_not_read_or_delete_response_records(server: NatsServer, passwords: Mapping[str, str]) -> None:
    """The runner keeps events only: it can neither read a stored response's record nor write or purge one."""
    runner = NatsSecurity.from_env(role_credentials("runner", passwords))
    nc = await natsio.connect(server.url, name="not-a-streamer", security=runner)
    try:
        for subject in RECORD_SUBJECTS_NOT_THE_RUNNERS:
            await nc.publish(subject, b"")
        await nc.flush()
        await eventually_true(
            lambda: len(violations(server.log_path)) >= len(RECORD_SUBJECTS_NOT_THE_RUNNERS),
            what="nats-server to log each permission violation",
        )
    finally:
        await nc.close()
    refused = {
        re.sub(r'.* - (\w+) Violation - Subject "([^"]*)".*', r"\1 \2", line) for line in violations(server.log_path)
    }
    assert refused == {f"Publish {subject}" for subject in RECORD_SUBJECTS_NOT_THE_RUNNERS}
    assert all('"$G/user:tokenrelay-runner"' in line for line in violations(server.log_path))


# --- the documentation is the tested configuration ------------------------------------------------------------------

PERMISSIONS_DOC = AUTH_CONF.parent / "nats-permissions.md"
DOC_SECTIONS = {"GATEWAY": "gateway", "RUNNER": "runner", "STREAMER": "streamer", "FEEDBACK_EXPORT": "feedback export"}


def _granted(conf: str) -> dict[str, set[str]]:
    """Each permission block of the configuration: the subjects it allows (publish or subscribe)."""
    blocks = re.findall(r"^  ([A-Z_]+) = \{(.*?)^  \}", conf, flags=re.M | re.S)
    return {name: set(re.findall(r'"([^"]+)"', re.sub(r"#.*", "", body))) for name, body in blocks}


def _documented(doc: str, title: str) -> set[str]:
    section = doc.split(f"\n### {title} (", 1)[1].split("\n#", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return {subject for row in rows for subject in re.findall(r"`([^`]+)`", row)}


def test_the_permissions_document_shows_exactly_the_tested_configuration() -> None:
    doc = PERMISSIONS_DOC.read_text()
    conf = AUTH_CONF.read_text()
    assert f"```conf\n{conf}```" in doc
    granted = _granted(conf)
    assert set(granted) == set(DOC_SECTIONS)
    for block, title in DOC_SECTIONS.items():
        assert _documented(doc, title) == granted[block], f"the {title} table and the {block} block differ"


# --- a stream moved off a killed runner under the same users: jobs' bucket, history reads, fenced records ---------


async def test_a_stream_and_a_stored_response_move_off_a_killed_runner_with_only_the_documented_permissions() -> None:
    passwords = {role: secrets.token_urlsafe(18) for role in ROLES}
    with (
        configured_nats(auth_config(passwords)) as server,
        system(
            server.url,
            runners=2,
            runner_args=["--synthetic-tokens-per-s", "50", "--synthetic-length-tokens", str(LENGTH_TOKENS)],
            gateway_args=["--runner-stale-after-s", "1"],
            role_env={role: role_credentials(role, passwords) for role in ("gateway", "runner", "streamer")},
        ) as sut,
    ):
        sdk = openai.AsyncOpenAI(base_url=f"{sut.streamer_url}/v1", api_key="unused", max_retries=0)
        stored = await sdk.responses.create(
            model="synthetic", input="moved too", background=True, max_output_tokens=150
        )
        await wait_running(sut.gateway_url, _stream_id(stored.id))
        victim = await generating(sut.runners)  # the stored response's runner: the one stream there is yet
        created = await create_stream(sut.gateway_url, "moved", max_tokens=150)
        reading = asyncio.create_task(read_stream(created["events_url"]))
        await wait_running(sut.gateway_url, created["id"])
        await asyncio.sleep(1.0)
        victim.process.kill()  # SIGKILL: its streams move to the other runner

        stream = await reading
        assert stream.of("error") == [] and stream.terminal.json()["finish_reason"] == "length"
        assert stream.text == expected_text("moved", 150, LENGTH_TOKENS)
        done = await _finished(sdk, stored.id)
        assert done.status == "incomplete" and done.output_text == expected_text("moved too", 150, LENGTH_TOKENS)
        events = [event async for event in await sdk.responses.retrieve(stored.id, stream=True)]
        text = "".join(event.delta for event in events if event.type == "response.output_text.delta")
        assert text == done.output_text  # its kept events are whole: the earlier runner's part read back from history
        assert await metric(sut.gateway_url, "tokenrelay_gateway_stream_moves_total", outcome="moved") >= 1
        assert violations(server.log_path) == [], "a role used a subject its user may not"
