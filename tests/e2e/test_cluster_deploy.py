"""The clustered deployment: compose.cluster.yaml as ``docker-compose config`` resolves it, and its NATS configuration
run for real.

compose.cluster.yaml runs three NATS nodes from deploy/nats-cluster/nats.conf (one file, each node named by
``--server_name``) with deploy/nats-auth.conf's users, one gateway, two streamers and two runners that each connect as
their own NATS user, and nginx with deploy/nginx.conf. The checks on the file need docker-compose but no engine. The
real cluster runs that very nats.conf in three nats-servers from the wheel (only its listen addresses, its store and
its route hosts moved to loopback ports), with the authorization made the way the nodes' start script makes it, a
system configured as the compose file configures it, and deploy/nginx.conf in a real nginx in front.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
import pytest
import yaml

from tests.e2e.test_deploy import (
    CONFIGS,
    command,
    docker_compose,
    flag_value,
    nginx_listen_port,
    nginx_upstream_servers,
    parse_cli,
    published_ports,
    volumes,
)
from tests.e2e.test_nginx import nginx_binary
from tokenrelay.cli.supervisor import free_port
from tokenrelay.testing.cluster import NatsCluster, NatsNode, deployment_config, nats_cluster, rewrite
from tokenrelay.testing.nginx import nginx_proxy
from tokenrelay.testing.procs import system, wait_until
from tokenrelay.testing.sse import read_stream
from tokenrelay.testing.synthetic import expected_text, synthetic_args

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.cluster.yaml"
NATS_DIR = ROOT / "deploy" / "nats-cluster"
NATS_CONF = NATS_DIR / "nats.conf"
AUTH_SED = NATS_DIR / "auth.sed"
START_SH = NATS_DIR / "start.sh"
AUTH_CONF = ROOT / "deploy" / "nats-auth.conf"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
NODES = ("nats-1", "nats-2", "nats-3")
ROLES = ("gateway", "streamer", "runner")
DEPLOYED_FLAGS = ("--history-storage", "file", "--replicas", "3")
"""What every role's command in compose.cluster.yaml sets besides addresses; the real cluster runs the roles so."""
PASSWORD_VARIABLES = {
    role: f"TOKENRELAY_NATS_{role.upper()}_PASSWORD" for role in ("gateway", "runner", "streamer", "feedback")
}
API_VARIABLES = ("TOKENRELAY_API_KEYS", "TOKENRELAY_TOKEN_SECRET")
REQUIRED = (*PASSWORD_VARIABLES.values(), *API_VARIABLES)
"""The secrets compose.cluster.yaml refuses to start without."""
SECRETS = {
    **{variable: f"{role}-{'p' * 24}" for role, variable in PASSWORD_VARIABLES.items()},
    "TOKENRELAY_API_KEYS": "acme:tr-" + "k" * 32,
    "TOKENRELAY_TOKEN_SECRET": "s" * 40,
}
"""Values for the required variables when resolving the file (never used against a server)."""


# compose.cluster.yaml, as docker-compose resolves it


def cluster_config(env: Mapping[str, str] | None = None) -> tuple[int, dict[str, Any], str]:
    """(exit status, the resolved file, stderr) of ``docker-compose -f compose.cluster.yaml config`` under ``env``."""
    binary = docker_compose()
    clean_env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **(env or {})}
    version = subprocess.run(
        [binary, "version", "--short"], capture_output=True, text=True, check=True, env=clean_env
    ).stdout.strip()
    as_json = int(version.lstrip("v").split(".")[0]) >= 2  # v1 (Debian's 1.29) prints only YAML
    argv = [binary, "-f", str(COMPOSE_FILE), "config", *(["--format", "json"] if as_json else [])]
    result = subprocess.run(argv, check=False, capture_output=True, text=True, cwd=ROOT, env=clean_env)
    if result.returncode != 0:
        return result.returncode, {}, result.stderr
    resolved = orjson.loads(result.stdout) if as_json else yaml.safe_load(result.stdout)
    return 0, dict(resolved), result.stderr


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    status, resolved, stderr = cluster_config(SECRETS)
    assert status == 0, f"docker-compose config failed:\n{stderr}"
    return resolved


def services(compose: dict[str, Any]) -> dict[str, Any]:
    return dict(compose["services"])


def environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment as a mapping (from either the mapping or the list syntax)."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        return dict(str(item).split("=", 1) for item in raw)
    return {str(name): str(value) for name, value in raw.items()}


def nats_conf_value(pattern: str) -> str:
    found = re.findall(pattern, NATS_CONF.read_text(), re.M)
    assert len(found) == 1, f"{pattern!r} in {NATS_CONF.name}: {found}"
    return str(found[0])


def route_hosts() -> list[tuple[str, int]]:
    return [(host, int(port)) for host, port in re.findall(r"nats-route://([\w.-]+):(\d+)", NATS_CONF.read_text())]


def test_the_cluster_runs_three_nats_nodes_a_gateway_streamers_runners_and_nginx(compose: dict[str, Any]) -> None:
    assert set(services(compose)) == {*NODES, *ROLES, "nginx"}


def test_each_nats_node_is_the_official_image_named_for_its_service_and_storing_on_its_own_volume(
    compose: dict[str, Any],
) -> None:
    store_dir = nats_conf_value(r"^\s*store_dir:\s*(\S+)$")
    stores = set()
    for node in NODES:
        service = services(compose)[node]
        assert re.fullmatch(r"nats:2\.\d+-alpine", service["image"]), service["image"]
        assert command(service)[-2:] == ["--server_name", node]
        mounted = {target: source for source, target, _ in volumes(service)}
        assert mounted[store_dir] in compose["volumes"], f"{node}: the store should be a named volume"
        stores.add(mounted[store_dir])
    assert len(stores) == len(NODES), f"each node needs a store of its own: {stores}"


def test_the_nats_configuration_routes_every_node_to_every_other_on_its_cluster_port() -> None:
    cluster_port = int(nats_conf_value(r"^\s+listen:\s*0\.0\.0\.0:(\d+)$"))  # indented: the cluster block's
    assert sorted(route_hosts()) == [(node, cluster_port) for node in NODES]
    assert nats_conf_value(r"^\s*name:\s*(\S+)$")  # routes only join servers of one cluster name


def test_the_nats_start_script_reads_only_files_the_compose_file_mounts(compose: dict[str, Any]) -> None:
    used = set(re.findall(r"/etc/nats/[\w./-]+", START_SH.read_text()))
    assert used, "start.sh should read the mounted configuration"
    for node in NODES:
        service = services(compose)[node]
        assert command(service)[:2] == ["sh", "/etc/nats/cluster/start.sh"]
        mounts = [(target, Path(source), read_only) for source, target, read_only in volumes(service)]
        for path in {*used, "/etc/nats/cluster/start.sh"}:
            source = next((src / path.removeprefix(t).lstrip("/") for t, src, ro in mounts if path.startswith(t)), None)
            assert source is not None and source.is_file(), f"{node}: {path} is not a mounted file"
            assert source.resolve().is_relative_to(ROOT / "deploy"), source
        assert all(read_only for target, _, read_only in mounts if target.startswith("/etc/")), node


def test_every_nats_node_gets_each_password_the_authorization_refers_to(compose: dict[str, Any]) -> None:
    referred = set(re.findall(r"\$(\w+)", AUTH_SED.read_text()))
    assert referred == set(PASSWORD_VARIABLES.values())
    for node in NODES:
        env = environment(services(compose)[node])
        assert {name: env.get(name) for name in referred} == {name: SECRETS[name] for name in referred}, node


def test_the_authorization_script_leaves_no_password_placeholder() -> None:
    assert re.search(r'password:\s*"<', authorization()) is None


def test_every_role_lists_every_nats_node_and_keeps_three_copies_in_file_storage(compose: dict[str, Any]) -> None:
    client_port = nats_conf_value(r"^listen:\s*0\.0\.0\.0:(\d+)$")
    for role in ROLES:
        argv = command(services(compose)[role])
        servers = flag_value(argv, "--nats-url").split(",")
        assert servers == [f"nats://{node}:{client_port}" for node in NODES], role
        for flag, value in zip(DEPLOYED_FLAGS[::2], DEPLOYED_FLAGS[1::2], strict=True):
            assert flag_value(argv, flag) == value, (role, flag)


def test_each_role_connects_as_its_own_nats_user_with_its_password(compose: dict[str, Any]) -> None:
    users = set(re.findall(r"user:\s*([\w-]+)", AUTH_CONF.read_text()))
    for role in ROLES:
        env = environment(services(compose)[role])
        assert env["TOKENRELAY_NATS_USER"] == f"tokenrelay-{role}" and env["TOKENRELAY_NATS_USER"] in users, role
        assert env["TOKENRELAY_NATS_PASSWORD"] == SECRETS[PASSWORD_VARIABLES[role]], role


def test_the_gateway_and_the_streamers_take_the_api_keys_and_the_token_secret(compose: dict[str, Any]) -> None:
    for role in ("gateway", "streamer"):
        env = environment(services(compose)[role])
        assert {name: env.get(name) for name in API_VARIABLES} == {name: SECRETS[name] for name in API_VARIABLES}
    assert not set(API_VARIABLES) & set(environment(services(compose)["runner"])), "runners need no API secret"


@pytest.mark.parametrize("variable", REQUIRED)
def test_the_cluster_compose_refuses_to_start_without_each_secret(variable: str) -> None:
    status, _, stderr = cluster_config({name: value for name, value in SECRETS.items() if name != variable})
    assert status != 0
    assert f"set {variable}" in stderr, stderr


def test_two_streamers_sit_behind_the_nginx_upstream_and_two_runners_take_jobs(compose: dict[str, Any]) -> None:
    streamer = services(compose)["streamer"]
    assert streamer["deploy"]["replicas"] == 2
    assert services(compose)["runner"]["deploy"]["replicas"] == 2
    # One service name that resolves to both replicas: deploy/nginx.conf's upstream balances over it unchanged.
    upstreams = nginx_upstream_servers()
    for role in ("gateway", "streamer"):
        assert upstreams[f"tokenrelay_{role}"] == f"{role}:{parse_cli(command(services(compose)[role])).port}"


def duration_s(text: str) -> float:
    """A compose duration (``30s``, ``1m30s``) in seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, text
    return sum(float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)


def test_runners_get_longer_than_their_drain_timeout_before_docker_kills_them(compose: dict[str, Any]) -> None:
    runner = services(compose)["runner"]
    drain_s = parse_cli(command(runner)).drain_timeout_s
    assert duration_s(str(runner["stop_grace_period"])) > drain_s


def test_every_service_has_a_healthcheck_and_roles_wait_for_every_healthy_nats_node(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        check = service.get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL") and not check.get("disable", False), name
    monitor_port = nats_conf_value(r"^http:\s*0\.0\.0\.0:(\d+)$")
    for node in NODES:
        assert f"http://127.0.0.1:{monitor_port}/healthz" in services(compose)[node]["healthcheck"]["test"], node
    for role in ROLES:
        service = services(compose)[role]
        assert {name: dep["condition"] for name, dep in service["depends_on"].items()} == dict.fromkeys(
            NODES, "service_healthy"
        ), role
        port = parse_cli(command(service)).port
        assert f"http://127.0.0.1:{port}/healthz" in " ".join(service["healthcheck"]["test"]), role


def test_only_nginx_publishes_a_port_and_on_loopback_unless_told_otherwise(compose: dict[str, Any]) -> None:
    published = {name: ports for name, service in services(compose).items() if (ports := published_ports(service))}
    assert published == {"nginx": [("127.0.0.1", 8000, nginx_listen_port())]}
    status, elsewhere, stderr = cluster_config({**SECRETS, "TOKENRELAY_PUBLISH_ADDRESS": "10.0.0.5"})
    assert status == 0, stderr
    assert published_ports(services(elsewhere)["nginx"]) == [("10.0.0.5", 8000, nginx_listen_port())]


def test_nginx_runs_deploy_nginx_conf_and_the_gateway_hands_out_its_urls(compose: dict[str, Any]) -> None:
    mounts = {Path(source).resolve(): (target, ro) for source, target, ro in volumes(services(compose)["nginx"])}
    assert mounts.get(NGINX_CONF) == ("/etc/nginx/conf.d/default.conf", True), mounts
    args = parse_cli(command(services(compose)["gateway"]))
    assert args.streamer_url == args.public_url == "http://localhost:8000"


@pytest.mark.parametrize("role", ROLES)
def test_every_cluster_compose_command_is_accepted_by_the_cli_with_its_environment(
    compose: dict[str, Any], role: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [name for name in os.environ if name.startswith("TOKENRELAY_")]:
        monkeypatch.delenv(name)
    service = services(compose)[role]
    for name, value in environment(service).items():
        monkeypatch.setenv(name, value)
    args = parse_cli(command(service))
    assert args.command == role and args.host == "0.0.0.0"
    CONFIGS[role](args)  # the values, and the keys and secret from the environment, make a valid typed config


# The deployment's NATS configuration, run for real


def authorization() -> str:
    """deploy/nats-auth.conf as the nodes' start script makes it: auth.sed applied (by the system's sed)."""
    result = subprocess.run(["sed", "-f", str(AUTH_SED), str(AUTH_CONF)], capture_output=True, text=True, check=True)
    return result.stdout


def test_rewriting_the_nats_configuration_refuses_routes_to_hosts_that_are_not_nodes(tmp_path: Path) -> None:
    nodes = [NatsNode(name, 1, 2, 3, str(tmp_path)) for name in NODES[:2]]
    with pytest.raises(ValueError, match="nats-3"):
        rewrite(NATS_CONF.read_text(), nodes[0], nodes)


RUNNER = synthetic_args(tokens_per_s=500, length_tokens=1000)
TOKENS = 30
ADMISSION_TIMEOUT_S = 60.0
"""How long the gateway may take to admit streams again after a node dies (JetStream elects new leaders)."""
API_KEY = "tr-" + secrets.token_hex(16)


@pytest.fixture
def deployed_nats() -> Iterator[tuple[NatsCluster, dict[str, str]]]:
    """Three nodes on deploy/nats-cluster/nats.conf with the authorization; yields them and each role's password."""
    passwords = {role: secrets.token_hex(24) for role in PASSWORD_VARIABLES}
    env = {variable: passwords[role] for role, variable in PASSWORD_VARIABLES.items()}
    config = deployment_config(NATS_CONF, beside={"auth.conf": authorization()})
    with nats_cluster(len(NODES), names=NODES, config=config, env=env) as cluster:
        yield cluster, passwords


def role_env(passwords: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Each role's variables, as compose.cluster.yaml sets them."""
    api = {"TOKENRELAY_API_KEYS": f"acme:{API_KEY}", "TOKENRELAY_TOKEN_SECRET": secrets.token_hex(32)}
    found = {}
    for role in ROLES:
        nats = {"TOKENRELAY_NATS_USER": f"tokenrelay-{role}", "TOKENRELAY_NATS_PASSWORD": passwords[role]}
        found[role] = {**nats, **(api if role != "runner" else {})}
    return found


def nats_healthcheck_url() -> str:
    """The URL the compose file's nats healthcheck probes (read from the file itself, no docker-compose needed)."""
    raw = yaml.safe_load(COMPOSE_FILE.read_text())
    return str(raw["services"][NODES[0]]["healthcheck"]["test"][-1])


def healthy(node: NatsNode) -> bool:
    url = nats_healthcheck_url().replace("127.0.0.1:8222", f"127.0.0.1:{node.monitor_port}")
    try:
        with urllib.request.urlopen(url, timeout=2) as answer:
            return bool(answer.status == 200)
    except OSError:
        return False


def connected_users(cluster: NatsCluster) -> set[str]:
    """The NATS user of every client connection on the live nodes (``/connz?auth=true``)."""
    users = set()
    for node in cluster.live():
        with urllib.request.urlopen(f"{node.monitor_url}/connz?auth=true&limit=1024", timeout=2) as answer:
            users |= {str(conn.get("authorized_user")) for conn in orjson.loads(answer.read())["connections"]}
    return users


async def start(url: str, prompt: str) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {API_KEY}"}
    body = {"prompt": prompt, "max_tokens": TOKENS}
    async with aiohttp.ClientSession() as session, session.post(f"{url}/v1/streams", json=body, headers=headers) as r:
        return r.status, dict(await r.json())


async def stream_whole(url: str, prompt: str) -> None:
    """Start a stream through the proxy and read it through the proxy to its end."""
    status, created = await start(url, prompt)
    assert status == 201, created
    assert created["events_url"].startswith(url), created["events_url"]
    stream = await read_stream(created["events_url"])
    assert stream.terminal.event == "stop", stream.events[-1]
    assert stream.text == expected_text(prompt, TOKENS, 1000)


async def admitted_again(url: str) -> float:
    """Seconds until the gateway behind the proxy admits a stream again."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    while (answer := await start(url, "admitted?"))[0] != 201:
        assert loop.time() - began < ADMISSION_TIMEOUT_S, f"no stream admitted for {ADMISSION_TIMEOUT_S} s: {answer}"
        await asyncio.sleep(0.2)
    return loop.time() - began


def test_streams_through_nginx_on_the_deployed_nats_cluster_end_whole_before_and_after_a_node_dies(
    deployed_nats: tuple[NatsCluster, dict[str, str]],
) -> None:
    cluster, passwords = deployed_nats
    binary = nginx_binary()
    for node in cluster.nodes:  # what compose waits for before it starts the roles
        wait_until(lambda n=node: healthy(n), timeout_s=30, what=f"{node.name} to pass the compose healthcheck")
    port = free_port()  # first, so the gateway hands out URLs through the proxy
    url = f"http://127.0.0.1:{port}"
    with (
        system(
            cluster.url,
            runner_args=[*RUNNER, *DEPLOYED_FLAGS],
            streamer_args=DEPLOYED_FLAGS,
            gateway_args=[*DEPLOYED_FLAGS, "--streamer-url", url, "--public-url", url],
            runners=2,
            streamers=2,
            share_streamer_port=True,  # two streamers behind one upstream address, as nginx sees the scaled service
            role_env=role_env(passwords),
        ) as sut,
        nginx_proxy(
            binary,
            NGINX_CONF,
            gateway=urlsplit(sut.gateway_url).netloc,
            streamer=urlsplit(sut.streamer_url).netloc,
            port=port,
        ),
    ):
        asyncio.run(stream_whole(url, "before a node dies"))
        assert connected_users(cluster) == {f"tokenrelay-{role}" for role in ROLES}
        leader = cluster.wait_for_meta_leader()
        cluster.node(leader).kill()
        window_s = asyncio.run(admitted_again(url))
        print(f"meta leader {leader} killed: streams admitted again through nginx after {window_s:.1f} s")
        asyncio.run(stream_whole(url, "after a node died"))
        assert cluster.wait_for_meta_leader() != leader
