"""LiteLLM's proxy in front of an OpenAI-compatible upstream, the way ``bench.peers`` measures it.

LiteLLM is never a dependency of tokenrelay: it lives in a virtual environment of its own under
``bench/.venvs/litellm``, created (``python -m venv``, then ``pip install 'litellm[proxy]'``) the first time the
``litellm`` target is asked for. That folder holds a ``.gitignore`` of ``*``, so git never offers it for a commit.

The proxy runs with its defaults (one uvicorn worker), on 127.0.0.1 only, with a generated configuration whose one
model is the upstream as ``openai/<model>``. ``LITELLM_MASTER_KEY`` is the key clients send, and
``LITELLM_LOCAL_MODEL_COST_MAP=True`` keeps it from fetching its model price list over the network.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from tokenrelay.cli.supervisor import free_port, http_ok
from tokenrelay.testing.procs import stop_process, wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
LITELLM_VENV = REPO_ROOT / "bench" / ".venvs" / "litellm"
LITELLM_REQUIREMENT = "litellm[proxy]"
HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 180.0
"""The proxy imports a large package tree: on a busy machine it may take a minute before it answers; then it fails."""
LIVENESS_PATH = "/health/liveliness"
"""LiteLLM's own liveness route (spelled so), answered without the key."""
UPSTREAM_API_KEY = "unused"
"""The fake upstream checks no key, but LiteLLM's OpenAI client will not send a request without one."""


class LiteLLMExited(RuntimeError):
    """The proxy ended before it answered its liveness route; the message holds its output."""


@contextlib.contextmanager
def litellm_proxy(upstream_url: str, model: str, *, venv: Path = LITELLM_VENV) -> Iterator[tuple[str, str]]:
    """LiteLLM's proxy serving ``model`` from ``upstream_url`` (ending in ``/v1``); yields its base URL and the key
    to send once it is live; stops it by PID. Installs LiteLLM first when ``venv`` has none."""
    executable = ensure_litellm(venv)
    master_key = f"sk-{secrets.token_urlsafe(24)}"  # LiteLLM requires the sk- prefix
    port = free_port(HOST)
    url = f"http://{HOST}:{port}"
    with tempfile.TemporaryDirectory(prefix="bench-litellm-") as tmp:
        config_path, log_path = Path(tmp, "config.yaml"), Path(tmp, "litellm.log")
        # JSON is YAML: the configuration is built as data and encoded by orjson, never written by hand.
        config_path.write_bytes(orjson.dumps(proxy_config(upstream_url, model)))
        argv = [str(executable), "--config", str(config_path), "--host", HOST, "--port", str(port)]
        with open(log_path, "wb") as log:
            process = subprocess.Popen(argv, cwd=tmp, stdout=log, stderr=log, env=proxy_env(master_key))
        try:
            wait_until(
                lambda: _live_or_exited(process, url, log_path), timeout_s=STARTUP_TIMEOUT_S, what="LiteLLM's proxy"
            )
            yield url, master_key
        finally:
            stop_process(process)


def proxy_config(upstream_url: str, model: str) -> dict[str, Any]:
    """The proxy's configuration: ``model`` served by the OpenAI-compatible ``upstream_url``; the master key read
    from the environment, so it is never written to a file."""
    params = {"model": f"openai/{model}", "api_base": upstream_url, "api_key": UPSTREAM_API_KEY}
    return {
        "model_list": [{"model_name": model, "litellm_params": params}],
        "general_settings": {"master_key": "os.environ/LITELLM_MASTER_KEY"},
    }


def proxy_env(master_key: str) -> dict[str, str]:
    """This process's environment plus what keeps the proxy local: its key, and its bundled model price list."""
    return {**os.environ, "LITELLM_MASTER_KEY": master_key, "LITELLM_LOCAL_MODEL_COST_MAP": "True"}


def ensure_litellm(venv: Path = LITELLM_VENV) -> Path:
    """The ``litellm`` command of ``venv``, after creating the environment and installing LiteLLM's proxy into it
    when it is missing (this may take minutes)."""
    executable = venv / "bin" / "litellm"
    if executable.exists():
        return executable
    venv.parent.mkdir(parents=True, exist_ok=True)
    ignore = venv.parent / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n")  # as venv does from Python 3.13 on: git never offers the environments
    print(f"installing {LITELLM_REQUIREMENT} into {venv} (once; this may take minutes)", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    subprocess.run([*pip, LITELLM_REQUIREMENT], check=True)
    return executable


def _live_or_exited(process: subprocess.Popen[bytes], url: str, log_path: Path) -> bool:
    if process.poll() is not None:
        raise LiteLLMExited(f"LiteLLM's proxy exited with {process.returncode}:\n{log_path.read_text()}")
    return http_ok(f"{url}{LIVENESS_PATH}")
