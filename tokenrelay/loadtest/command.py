"""``tokenrelay loadtest``: its options, and running it from parsed arguments.

This module imports nothing that the CLI does not import already, so building the whole ``tokenrelay``
parser stays cheap; the driver is imported when the command runs.
"""

from __future__ import annotations

import argparse
import os
import sys

from tokenrelay.loadtest import plan as p
from tokenrelay.loadtest.apis import DEFAULT_MODEL, Api
from tokenrelay.runtime import values
from tokenrelay.runtime.service import EVENT_LOOPS, run_on_loop

API_KEY_ENV = "TOKENRELAY_API_KEY"
EXIT_OK = 0
EXIT_TOKENS_WRONG = 1
"""Exit status when any token was lost or duplicated (the run's other outcomes do not change it)."""

DESCRIPTION = """\
Open many concurrent streams against a running tokenrelay deployment and measure what users feel:
time to first token, token lag, gaps between tokens, start and rejection latency, stops over one
shared control WebSocket, readers that never read, lost or duplicated tokens, and each instance's
memory and CPU from its /metrics. With --api openai or --api anthropic the streams go to any
compatible server instead (vLLM, a proxy, a tokenrelay streamer's compatible APIs)."""

EPILOG = f"""\
Every started stream ends in exactly one of: completed, stopped, rejected, failed, never_read.
Errors are counted by code: the server's (HTTP, SSE error event, WebSocket error) or the load
test's own (connection_error, timeout, protocol_error, drain_timeout, interrupted). Ctrl-C cuts
the run short and still reports; a second Ctrl-C aborts.

JSON (--json) top level: config, duration_s, streams, errors, tokens, ttft_ms, token_lag_ms,
history_lag_ms, token_lag_after_ramp_ms, inter_token_ms, start_ms, rejected_ms (each {{p50, p95, p99, max,
n}} in ms), instances, samples. token_lag_ms counts the deltas published after the reader's GET was sent;
history_lag_ms the ones published before it (they waited for the reader to connect, which TTFT shows);
token_lag_after_ramp_ms those of token_lag_ms published once the last stream had started (the load at its
full size, without streams starting). With --api openai or anthropic the three lag figures stay empty
(n 0: those chunks carry no producer timestamp) and tokens lost or duplicated are not checked.

Exit status: {EXIT_OK} when the run finished, {EXIT_TOKENS_WRONG} when any token was lost or duplicated, 2 for bad
options. The API key may also come from ${API_KEY_ENV} (kept out of process lists)."""


positive_int = values.POSITIVE_COUNT
"""An argparse type: an integer >= 1."""
fraction = values.number(minimum=0.0, maximum=1.0)
"""An argparse type: a number in [0, 1]."""
non_negative_float = values.number(minimum=0.0)
"""An argparse type: a finite number >= 0."""
positive_float = values.number(above=0.0)
"""An argparse type: a finite number > 0."""


def _int_mix(text: str) -> p.Mix[int]:
    try:
        return p.parse_int_mix(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


API_NAMES = tuple(api.value for api in Api)


def _api(text: str) -> Api:
    try:
        return Api(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(API_NAMES)}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Every ``loadtest`` option, with its unit in its name and its meaning in ``--help``."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    _target_options(parser.add_argument_group("target"))
    load = parser.add_argument_group("load")
    _shape_options(load)
    _mix_options(load)
    _timeout_options(load)
    _report_options(parser.add_argument_group("observe and report"))


def _target_options(group: argparse._ArgumentGroup) -> None:
    add = group.add_argument
    add(
        "--api",
        type=_api,
        default=Api.NATIVE,
        metavar="{" + ",".join(API_NAMES) + "}",
        help="the API streams are started over: native (tokenrelay's POST /v1/streams, then its events), openai "
        "(POST /v1/chat/completions, stream: true) or anthropic (POST /v1/messages, stream: true), so any "
        "compatible server or proxy can be measured; --stop-fraction and --never-read-fraction are native only, "
        "and no token lag is measured with the others (their chunks carry no producer timestamp) "
        "(default: native)",
    )
    add(
        "--gateway-url",
        type=values.base_url,
        default=p.DEFAULT_GATEWAY_URL,
        help="base URL of the target, without /v1: the gateway for --api native, the server (a streamer, vLLM, "
        "a proxy) for openai and anthropic (default: %(default)s)",
    )
    add(
        "--model",
        default=DEFAULT_MODEL,
        help="the model each request names with --api openai or anthropic (default: %(default)s)",
    )
    add(
        "--api-key",
        default=None,
        help="sent on every request as 'Authorization: Bearer KEY' (with --api anthropic: 'x-api-key: KEY'), and "
        f"on the control WebSocket (default: ${API_KEY_ENV} if set)",
    )
    add(
        "--source-addresses",
        type=positive_int,
        default=1,
        metavar="K",
        help="spread connections over local addresses 127.0.0.1 ... 127.0.0.K (one connection pool each), "
        "for more connections than one address has ephemeral ports; 127.x targets only (default: 1)",
    )


def _shape_options(group: argparse._ArgumentGroup) -> None:
    add = group.add_argument
    add(
        "--streams",
        type=positive_int,
        default=p.DEFAULT_STREAMS,
        metavar="N",
        help="streams to start in total (default: %(default)s)",
    )
    add(
        "--concurrency",
        type=positive_int,
        default=None,
        metavar="N",
        help="streams open at once at most (default: --streams)",
    )
    add(
        "--ramp-per-s",
        type=non_negative_float,
        default=0.0,
        metavar="RATE",
        help="new streams started per second (default: 0 = as fast as --concurrency allows)",
    )
    add(
        "--duration-s",
        type=non_negative_float,
        default=0.0,
        metavar="SECONDS",
        help="stop starting new streams after this many seconds; streams still open are cut off at "
        "duration + drain (default: 0 = start all --streams)",
    )
    add(
        "--drain-s",
        type=non_negative_float,
        default=p.DEFAULT_DRAIN_S,
        metavar="SECONDS",
        help="once no more streams start, open ones get this long to end before they are cut off "
        "(counted as drain_timeout) (default: %(default)s)",
    )


def _mix_options(group: argparse._ArgumentGroup) -> None:
    add = group.add_argument
    add(
        "--max-tokens",
        type=_int_mix,
        default=p.parse_int_mix(p.DEFAULT_MAX_TOKENS),
        metavar="MIX",
        help="max_tokens per stream: '64', '16,64,256' (round-robin) or '16:3,256:1' (value:weight, "
        f"smooth weighted round-robin) (default: {p.DEFAULT_MAX_TOKENS})",
    )
    add(
        "--prompt",
        action="append",
        default=None,
        metavar="TEXT",
        help="prompt of the streams; repeat for a round-robin mix (a prompt given twice weighs twice); "
        f"'{{i}}' becomes the stream's number (default: {p.DEFAULT_PROMPT!r})",
    )
    add(
        "--stop-fraction",
        type=fraction,
        default=0.0,
        metavar="F",
        help="fraction of streams stopped over one shared control WebSocket once they received a random "
        "number of tokens, uniform in 1 .. max_tokens-1 (one that ends before that point completes "
        "normally) (default: 0)",
    )
    add(
        "--never-read-fraction",
        type=fraction,
        default=0.0,
        metavar="F",
        help="fraction of streams whose reader opens the events with a small receive buffer (SO_RCVBUF "
        "4096 bytes) and never reads a byte, until the server closes it or the stream ends (default: 0)",
    )
    add("--seed", type=int, default=0, help="random seed for the stop points (default: %(default)s)")


def _timeout_options(group: argparse._ArgumentGroup) -> None:
    add = group.add_argument
    add(
        "--request-timeout-s",
        type=positive_float,
        default=p.DEFAULT_REQUEST_TIMEOUT_S,
        metavar="SECONDS",
        help="a start, stop, status or /metrics request, or a connect, slower than this fails as timeout "
        "(default: %(default)s)",
    )
    add(
        "--read-timeout-s",
        type=positive_float,
        default=p.DEFAULT_READ_TIMEOUT_S,
        metavar="SECONDS",
        help="an events connection silent this long (no event, no heartbeat) fails as timeout (default: %(default)s)",
    )


def _report_options(group: argparse._ArgumentGroup) -> None:
    add = group.add_argument
    add(
        "--metrics-url",
        type=values.base_url,
        action="append",
        default=None,
        metavar="URL",
        help="base URL (or /metrics URL) of an instance (gateway, streamer or runner) whose /metrics is sampled: "
        "open SSE readers, open control sockets, resident memory, CPU seconds; repeatable",
    )
    add(
        "--sample-interval-s",
        type=positive_float,
        default=p.DEFAULT_SAMPLE_INTERVAL_S,
        metavar="SECONDS",
        help="how often each --metrics-url is sampled (default: %(default)s)",
    )
    add("--json", metavar="PATH", default=None, help="write the results as JSON to PATH")
    add(
        "--report-dir",
        metavar="DIR",
        default=None,
        help="write ttft.svg, lag.svg, open_streams.svg, rss.svg and report.html (all of them inline) to DIR",
    )
    add(
        "--quiet",
        action="store_true",
        help="no live progress line on standard error (the final report still goes to standard output)",
    )
    add(
        "--log-level",
        type=values.log_level,
        choices=values.LOG_LEVELS,
        default="WARNING",
        help="log level of the load test's own messages (default: %(default)s)",
    )
    add(
        "--event-loop",
        choices=EVENT_LOOPS,
        default="auto",
        help="the load test's own event loop; auto: uvloop where installed, else asyncio. Its latency and CPU are "
        "in every figure measured, so the lighter loop leaves more of a shared machine to the system under test "
        "(default: %(default)s)",
    )


def config_from_args(args: argparse.Namespace) -> p.LoadTestConfig:
    """The typed configuration of parsed arguments (``ValueError`` for inconsistent options)."""
    return p.LoadTestConfig(
        gateway_url=args.gateway_url,
        api=args.api,
        model=args.model,
        api_key=args.api_key or os.environ.get(API_KEY_ENV) or None,
        streams=args.streams,
        concurrency=args.concurrency,
        ramp_per_s=args.ramp_per_s,
        duration_s=args.duration_s,
        drain_s=args.drain_s,
        max_tokens=args.max_tokens,
        prompts=p.prompt_mix(args.prompt or [p.DEFAULT_PROMPT]),
        stop_fraction=args.stop_fraction,
        never_read_fraction=args.never_read_fraction,
        metrics_urls=tuple(args.metrics_url or ()),
        sample_interval_s=args.sample_interval_s,
        request_timeout_s=args.request_timeout_s,
        read_timeout_s=args.read_timeout_s,
        source_addresses=args.source_addresses,
        seed=args.seed,
        json_path=args.json,
        report_dir=args.report_dir,
        quiet=args.quiet,
        event_loop=args.event_loop,
    )


def run(args: argparse.Namespace) -> int:
    """Run ``tokenrelay loadtest`` with parsed arguments; print the report; return the exit status."""
    try:
        config = config_from_args(args)
        from tokenrelay.loadtest.driver import LoadTest, source_addresses

        source_addresses(config.gateway_url, config.source_addresses)
    except ValueError as exc:
        print(f"tokenrelay loadtest: {exc}", file=sys.stderr)
        return 2
    from tokenrelay.loadtest import report

    result = run_on_loop(LoadTest(config, progress=sys.stderr).run(), event_loop=config.event_loop)
    print(report.format_text(result), flush=True)
    if config.json_path:
        report.write_json(result, config.json_path)
        print(f"wrote {config.json_path}", file=sys.stderr)
    if config.report_dir:
        written = report.write_report_dir(result, config.report_dir)
        print(f"wrote {', '.join(str(path) for path in written)}", file=sys.stderr)
    tokens_wrong = result.totals.lost or result.totals.duplicated
    return EXIT_TOKENS_WRONG if tokens_wrong else EXIT_OK
