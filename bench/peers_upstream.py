"""The fake OpenAI-compatible upstream of ``bench.peers`` as a process of its own.

It serves the fake upstream of ``tokenrelay.testing.fake_openai``: every chat completion streams ``--tokens``
one-word chunks, the first at once and the others ``--interval-ms`` apart, then a ``stop`` finish and a usage chunk,
as an inference server does. It runs in its own process, so the load generator and the targets never share its
event loop, and on uvloop where installed. Once it listens it writes its base URL (``http://127.0.0.1:<port>/v1``) to
``--url-file``, and it serves until SIGTERM or SIGINT.

    python -m bench.peers_upstream --tokens 40 --interval-ms 20 --url-file upstream-url.txt
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from tokenrelay.loadtest.command import non_negative_float, positive_int
from tokenrelay.runtime.service import run_on_loop
from tokenrelay.testing.fake_openai import FakeUpstream
from tokenrelay.testing.procs import stop_process, wait_until

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_TOKENS = 40
DEFAULT_INTERVAL_MS = 20.0
PROMPT_TOKENS = 16
"""The ``prompt_tokens`` the usage chunk reports (its ``completion_tokens`` are the chunks sent)."""


class UpstreamExited(RuntimeError):
    """The fake upstream ended before it listened; the message holds its output."""


def words(tokens: int) -> list[str]:
    """The text of every answer: ``tokens`` words, one chunk each."""
    return [f" w{i}" for i in range(tokens)]


async def serve(tokens: int, interval_ms: float, url_file: Path) -> None:
    """Serve until SIGTERM or SIGINT; the base URL goes to ``url_file`` once the server listens."""
    upstream = FakeUpstream(
        words(tokens), interval_s=interval_ms / 1000, finish_reason="stop", usage_prompt_tokens=PROMPT_TOKENS
    )
    await upstream.start()
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    written = url_file.with_suffix(".tmp")
    written.write_text(upstream.url)
    written.replace(url_file)  # whole or absent: the parent never reads half a URL
    try:
        await stopped.wait()
    finally:
        await upstream.stop()


@contextlib.contextmanager
def fake_upstream(*, tokens: int = DEFAULT_TOKENS, interval_ms: float = DEFAULT_INTERVAL_MS) -> Iterator[str]:
    """Start the fake upstream as a process; yield its base URL (ending in ``/v1``) once it listens; stop it by PID."""
    with tempfile.TemporaryDirectory(prefix="bench-peers-upstream-") as tmp:
        url_file, log_path = Path(tmp, "url"), Path(tmp, "upstream.log")
        argv = [
            sys.executable, "-m", "bench.peers_upstream", "--tokens", str(tokens), "--interval-ms", str(interval_ms),
            "--url-file", str(url_file),
        ]  # fmt: skip
        with open(log_path, "wb") as log:
            process = subprocess.Popen(argv, cwd=REPO_ROOT, stdout=log, stderr=log)
        try:
            wait_until(lambda: _listening_or_exited(process, url_file, log_path), what="the fake upstream")
            yield url_file.read_text()
        finally:
            stop_process(process)


def _listening_or_exited(process: subprocess.Popen[bytes], url_file: Path, log_path: Path) -> bool:
    if process.poll() is not None:
        raise UpstreamExited(f"the fake upstream exited with {process.returncode}:\n{log_path.read_text()}")
    return url_file.exists()


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the fake upstream that the arguments describe."""
    p = argparse.ArgumentParser(prog="python -m bench.peers_upstream", description=__doc__)
    p.add_argument("--tokens", type=positive_int, default=DEFAULT_TOKENS, help="chunks per answer (default: 40)")
    p.add_argument(
        "--interval-ms", type=non_negative_float, default=DEFAULT_INTERVAL_MS, help="between chunks (default: 20)"
    )
    p.add_argument("--url-file", type=Path, required=True, help="where the base URL is written once it listens")
    args = p.parse_args(argv)
    run_on_loop(serve(args.tokens, args.interval_ms, args.url_file), event_loop="auto")


if __name__ == "__main__":
    main()
