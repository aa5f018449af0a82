"""HTTP helpers against a running system: JSON requests, stream creation, metrics, a reader that never reads."""

from __future__ import annotations

import asyncio
import re
import socket
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson


async def post(url: str, body: Any = None, *, data: bytes | None = None) -> tuple[int, Any]:
    """POST JSON (or raw ``data``); return (status, parsed JSON body)."""
    payload = data if data is not None else orjson.dumps(body)
    headers = {"Content-Type": "application/json"}
    async with aiohttp.ClientSession() as session, session.post(url, data=payload, headers=headers) as response:
        return response.status, orjson.loads(await response.read())


async def get_json(url: str, *, headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """GET; return (status, parsed JSON body)."""
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        return response.status, orjson.loads(await response.read())


async def create_stream(gateway_url: str, prompt: str, max_tokens: int = 40) -> dict[str, Any]:
    """POST /v1/streams and insist on 201."""
    status, body = await post(f"{gateway_url}/v1/streams", {"prompt": prompt, "max_tokens": max_tokens})
    assert status == 201, body
    return dict(body)


async def metric(url: str, name: str, **labels: str) -> float:
    """Sum of the samples of metric ``name`` on a process's ``/metrics`` (those with ``labels``, if given)."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/metrics") as response:
        text = await response.text()
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", re.M)
    wanted = {f'{key}="{value}"' for key, value in labels.items()}
    return sum(float(value) for found, value in pattern.findall(text) if wanted <= set(found.split(",")))


async def wait_finished(
    gateway_url: str, stream_id: str, timeout_s: float = 30, *, headers: dict[str, str] | None = None
) -> dict[str, Any]:
    """Poll the status endpoint until the stream is finished."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while True:
        status, body = await get_json(f"{gateway_url}/v1/streams/{stream_id}", headers=headers)
        assert status == 200, body
        if body["state"] == "finished":
            return dict(body)
        assert loop.time() < deadline, f"stream {stream_id} not finished: {body}"
        await asyncio.sleep(0.05)


async def wait_for_metric(url: str, name: str, at_least: float, *, timeout_s: float = 30, **labels: str) -> float:
    """Poll a process's metric (the samples with ``labels``) until it reaches ``at_least``; return its value."""
    for _ in range(int(timeout_s / 0.02)):
        value = await metric(url, name, **labels)
        if value >= at_least:
            return value
        await asyncio.sleep(0.02)
    raise AssertionError(f"{name} at {url} never reached {at_least}")


def stalled_reader(events_url: str, *, receive_buffer_bytes: int = 4096) -> socket.socket:
    """Open the SSE request with a tiny receive window and never read a byte (the caller closes it)."""
    url = urlsplit(events_url)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer_bytes)
    sock.connect((url.hostname or "127.0.0.1", url.port or 80))
    sock.sendall(f"GET {url.path} HTTP/1.1\r\nHost: {url.netloc}\r\nAccept: text/event-stream\r\n\r\n".encode())
    return sock
