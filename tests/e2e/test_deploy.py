"""Deployment files: compose.yaml as ``docker-compose config`` resolves it, its commands as our CLI parses them,
and the Dockerfile's view of the project.

No Docker engine is needed: ``docker-compose config`` only reads and validates the file. Every command in
compose.yaml goes through the real ``tokenrelay`` argument parser (abbreviations off), so a renamed or removed flag
fails here instead of in a container that restarts forever.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shlex
import shutil
import subprocess
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tokenrelay.cli import main as cli
from tokenrelay.runtime import config as c

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
ROLES = ("gateway", "streamer", "runner")
NATS_URL = "nats://nats:4222"
DEFAULT_PUBLIC_URL = "http://localhost:8000"
CONFIGS: dict[str, Callable[[argparse.Namespace], object]] = {
    "gateway": cli.gateway_config,
    "streamer": cli.streamer_config,
    "runner": cli.runner_config,
}


def in_ci() -> bool:
    """Whether the CI environment variable is set (then a missing tool is a failure, not a skip)."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def docker_compose() -> str:
    """The docker-compose binary; skip without it, except under CI (``.ci/run`` installs it)."""
    path = shutil.which("docker-compose")
    if path is None:
        if in_ci():
            pytest.fail("docker-compose is not installed, but CI is set: .ci/run installs the docker-compose package")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose; CI installs it)")
    return path


def compose_config(env: dict[str, str] | None = None) -> dict[str, Any]:
    """compose.yaml as ``docker-compose config`` resolves it (anchors merged, variables interpolated)."""
    binary = docker_compose()
    clean_env = {"PATH": os.environ.get("PATH", ""), "HOME": os.environ.get("HOME", "/tmp"), **(env or {})}
    version = subprocess.run(
        [binary, "version", "--short"], capture_output=True, text=True, check=True, env=clean_env
    ).stdout.strip()
    # Compose v2 prints JSON on request; v1 (Debian's docker-compose 1.29) only YAML.
    as_json = int(version.lstrip("v").split(".")[0]) >= 2
    argv = [binary, "-f", str(COMPOSE_FILE), "config", *(["--format", "json"] if as_json else [])]
    result = subprocess.run(argv, check=False, capture_output=True, text=True, cwd=ROOT, env=clean_env)
    assert result.returncode == 0, f"docker-compose config failed:\n{result.stderr}"
    if as_json:
        return dict(json.loads(result.stdout))
    import yaml  # PyYAML; only the YAML-printing v1 needs it

    return dict(yaml.safe_load(result.stdout))


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return compose_config()


def services(compose: dict[str, Any]) -> dict[str, Any]:
    return dict(compose["services"])


def command(service: dict[str, Any]) -> list[str]:
    """A service's command as argv (v1 keeps the string form, v2 splits it)."""
    raw = service["command"]
    return shlex.split(raw) if isinstance(raw, str) else [str(part) for part in raw]


def flag_value(argv: list[str], flag: str) -> str:
    assert argv.count(flag) == 1, f"{flag} should appear exactly once in {argv}"
    return argv[argv.index(flag) + 1]


def published_ports(service: dict[str, Any]) -> list[tuple[str, int, int]]:
    """(host_ip, published, target) for each port mapping, from either the short or the long syntax."""
    out = []
    for port in service.get("ports", []):
        if isinstance(port, dict):
            out.append((port.get("host_ip", ""), int(port["published"]), int(port["target"])))
            continue
        spec = str(port).split("/")[0]
        *host, published, target = spec.split(":")
        out.append((host[0] if host else "", int(published), int(target)))
    return out


def volumes(service: dict[str, Any]) -> list[tuple[str, str, bool]]:
    """(source, target, read_only) for each volume, from either the short or the long syntax."""
    out = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            out.append((str(volume["source"]), str(volume["target"]), bool(volume.get("read_only", False))))
            continue
        source, target, *mode = str(volume).split(":")
        out.append((source, target, "ro" in mode[0].split(",") if mode else False))
    return out


def strict_parser() -> argparse.ArgumentParser:
    """The real ``tokenrelay`` parser with abbreviations off, so only a flag's exact name is accepted."""
    parser = cli.build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                sub.allow_abbrev = False
    return parser


def parse_cli(argv: list[str]) -> argparse.Namespace:
    """Parse ``tokenrelay ...`` argv like the console script would; fail the test with argparse's message."""
    assert argv[0] == "tokenrelay", f"command should run the tokenrelay console script: {argv}"
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return strict_parser().parse_args(argv[1:])
    except SystemExit:
        pytest.fail(f"tokenrelay refuses {shlex.join(argv)}:\n{stderr.getvalue()}")


def nginx_upstream_servers() -> dict[str, str]:
    """upstream name -> its ``server host:port`` in deploy/nginx.conf."""
    text = NGINX_CONF.read_text()
    blocks = re.findall(r"upstream\s+(\w+)\s*\{(.*?)\}", text, re.S)
    return {name: re.findall(r"^\s*server\s+([^\s;]+)[^;]*;", body, re.M)[0] for name, body in blocks}


def nginx_listen_port() -> int:
    ports = re.findall(r"^\s*listen\s+(?:\S+:)?(\d+)\s*;", NGINX_CONF.read_text(), re.M)
    assert len(ports) == 1, f"deploy/nginx.conf should listen on one port, found {ports}"
    return int(ports[0])


# compose.yaml, as docker-compose resolves it


def test_compose_runs_nats_a_gateway_a_streamer_runners_and_nginx(compose: dict[str, Any]) -> None:
    assert set(services(compose)) == {"nats", "gateway", "streamer", "runner", "nginx"}


def test_nats_is_the_official_image_with_jetstream_storing_on_a_named_volume(compose: dict[str, Any]) -> None:
    nats = services(compose)["nats"]
    assert re.fullmatch(r"nats:2\.\d+(-alpine)?", nats["image"]), nats["image"]
    argv = command(nats)
    assert "-js" in argv or "--jetstream" in argv
    store_flag = next(f for f in ("-sd", "--store_dir") if f in argv)
    store_dir = flag_value(argv, store_flag)
    mounted = {target: source for source, target, _ in volumes(nats)}
    assert store_dir in mounted, f"the JetStream store {store_dir} is not a volume: {mounted}"
    assert mounted[store_dir] in compose["volumes"], "the store should be a named volume that outlives containers"


def test_every_role_connects_to_the_nats_service(compose: dict[str, Any]) -> None:
    assert "-p" not in command(services(compose)["nats"]), "nats should listen on its default port 4222"
    for role in ROLES:
        assert flag_value(command(services(compose)[role]), "--nats-url") == NATS_URL, role


def test_every_role_keeps_history_in_the_same_storage(compose: dict[str, Any]) -> None:
    # Every role declares the JetStream streams; different settings would make the declarations conflict.
    storages = {role: flag_value(command(services(compose)[role]), "--history-storage") for role in ROLES}
    assert set(storages.values()) == {"file"}, storages


def test_runners_run_as_two_replicas(compose: dict[str, Any]) -> None:
    assert services(compose)["runner"]["deploy"]["replicas"] == 2


def test_every_service_has_a_healthcheck(compose: dict[str, Any]) -> None:
    for name, service in services(compose).items():
        check = service.get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), f"{name} has no healthcheck"
        assert not check.get("disable", False), name


def test_each_role_healthcheck_probes_the_port_the_role_listens_on(compose: dict[str, Any]) -> None:
    for role in ROLES:
        service = services(compose)[role]
        port = parse_cli(command(service)).port
        probe = " ".join(service["healthcheck"]["test"])
        assert f"http://127.0.0.1:{port}/healthz" in probe, f"{role}: {probe}"


def test_roles_wait_for_a_healthy_nats_and_nginx_for_healthy_roles(compose: dict[str, Any]) -> None:
    for role in ROLES:
        assert services(compose)[role]["depends_on"]["nats"]["condition"] == "service_healthy", role
    nginx = services(compose)["nginx"]["depends_on"]
    assert {name: dep["condition"] for name, dep in nginx.items()} == {
        "gateway": "service_healthy",
        "streamer": "service_healthy",
    }


def test_nothing_is_published_beyond_loopback_unless_asked_and_then_only_nginx(compose: dict[str, Any]) -> None:
    def beyond_loopback(resolved: dict[str, Any]) -> dict[str, list[tuple[str, int, int]]]:
        return {
            name: ports
            for name, service in services(resolved).items()
            if (ports := [p for p in published_ports(service) if p[0] not in ("127.0.0.1", "::1")])
        }

    assert beyond_loopback(compose) == {}  # API keys are optional here: the default reaches loopback only
    assert published_ports(services(compose)["nginx"]) == [("127.0.0.1", 8000, nginx_listen_port())]
    opened = beyond_loopback(compose_config({"TOKENRELAY_PUBLISH_ADDRESS": "0.0.0.0"}))
    assert list(opened) == ["nginx"], opened
    assert [(published, target) for _, published, target in opened["nginx"]] == [(8000, nginx_listen_port())]


def test_runners_get_longer_to_stop_than_their_drain_takes(compose: dict[str, Any]) -> None:
    grace = services(compose)["runner"]["stop_grace_period"]
    grace_s = float(grace.removesuffix("s")) if isinstance(grace, str) else float(grace)
    assert grace_s > c.DEFAULT_DRAIN_TIMEOUT_S


def test_nginx_mounts_deploy_nginx_conf_as_its_http_server_config(compose: dict[str, Any]) -> None:
    nginx = services(compose)["nginx"]
    assert nginx["image"].startswith("nginx:")
    mounts = {Path(source).resolve(): (target, read_only) for source, target, read_only in volumes(nginx)}
    # The official image includes conf.d/*.conf inside its http block, which is what deploy/nginx.conf is written for.
    assert mounts.get(NGINX_CONF) == ("/etc/nginx/conf.d/default.conf", True), mounts


def test_nginx_upstreams_are_the_compose_services_on_the_ports_they_listen_on(compose: dict[str, Any]) -> None:
    upstreams = nginx_upstream_servers()
    for role in ("gateway", "streamer"):
        port = parse_cli(command(services(compose)[role])).port
        assert upstreams[f"tokenrelay_{role}"] == f"{role}:{port}"


def test_the_gateway_hands_out_urls_through_nginx(compose: dict[str, Any]) -> None:
    args = parse_cli(command(services(compose)["gateway"]))
    assert args.streamer_url == DEFAULT_PUBLIC_URL
    assert args.public_url == DEFAULT_PUBLIC_URL
    assert urlsplit(DEFAULT_PUBLIC_URL).port == published_ports(services(compose)["nginx"])[0][1]


def test_tokenrelay_public_url_sets_the_urls_the_gateway_hands_out() -> None:
    compose = compose_config({"TOKENRELAY_PUBLIC_URL": "https://tokens.example.com"})
    args = parse_cli(command(services(compose)["gateway"]))
    assert (args.streamer_url, args.public_url) == ("https://tokens.example.com", "https://tokens.example.com")


def test_the_roles_are_built_from_this_repository(compose: dict[str, Any]) -> None:
    for role in ROLES:
        build = services(compose)[role]["build"]
        context = build["context"] if isinstance(build, dict) else build
        assert Path(context).resolve() == ROOT, role


# compose.yaml's commands, as the tokenrelay CLI parses them


@pytest.mark.parametrize("role", ROLES)
def test_every_flag_in_the_compose_command_is_accepted_by_the_cli(compose: dict[str, Any], role: str) -> None:
    argv = command(services(compose)[role])
    args = parse_cli(argv)
    assert args.command == role
    assert args.host == "0.0.0.0", "a role in a container must listen beyond its own loopback"
    CONFIGS[role](args)  # and the values make a valid typed config


def test_the_flag_check_refuses_an_abbreviated_or_unknown_flag() -> None:
    with pytest.raises(pytest.fail.Exception, match="refuses"):
        parse_cli(["tokenrelay", "gateway", "--streamer", "http://x"])
    with pytest.raises(pytest.fail.Exception, match="refuses"):
        parse_cli(["tokenrelay", "runner", "--no-such-flag", "1"])


# The Dockerfile


def dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


def test_the_image_copies_every_package_the_project_installs() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = [p.rstrip("*") for p in pyproject["tool"]["setuptools"]["packages"]["find"]["include"]]
    copied = re.findall(r"^COPY\s+(\S+)\s+\./(\S+?)/?$", dockerfile(), re.M)
    for package in packages:
        assert (package, package) in copied, f"the Dockerfile does not COPY {package}"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert not set(packages) & set(ignored), "a package the image needs is in .dockerignore"


def test_the_image_copies_the_files_pip_install_reads() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    first_copy = re.search(r"^COPY\s+(.+)\s+\./$", dockerfile(), re.M)
    assert first_copy is not None
    assert {"pyproject.toml", pyproject["project"]["readme"]} <= set(first_copy.group(1).split())


def test_the_image_runs_as_an_unprivileged_user() -> None:
    users = re.findall(r"^USER\s+(\S+)", dockerfile(), re.M)
    assert users and users[-1] not in ("root", "0"), users
