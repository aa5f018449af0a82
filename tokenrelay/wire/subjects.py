"""NATS subjects, JetStream streams and KV buckets: the whole wire topology in one place.

==============================================  =========  ===================================
subject                                         pattern    carries
==============================================  =========  ===================================
``tokenrelay.jobs.<model>``                      req/reply  JobRequest -> JobAccepted|JobRejected
                                                            (queue group ``runners``; one subject
                                                            per model, :func:`model_token`)
``tokenrelay.stream.<id>.events``                pub/sub    StreamStart, StreamDelta, then StreamEnd
                                                            or StreamError
                                                            (captured by JetStream for replay)
``tokenrelay.stream.<id>.replay``                req/reply  ReplayRequest -> ReplayPage + events
                                                            (the runner generating the stream, from
                                                            memory; no responders: read JetStream)
``tokenrelay.runner.<runner_id>.cancel``         req/reply  CancelRequest -> CancelReply
``tokenrelay.runner.<runner_id>.ping``           req/reply  (empty) -> RunnerHeartbeat (a gateway
                                                            checks a runner whose heartbeats stopped
                                                            before it declares it lost)
``tokenrelay.gateway.<gateway_id>.cancel``       req/reply  CancelRequest -> CancelReply
                                                            (streams still queued in a gateway)
``tokenrelay.gateway.<gateway_id>.done``         pub/sub    StreamDone (runner -> the gateway that
                                                            admitted the stream: frees its key's slot,
                                                            and its queue's head asks for the runner's)
``tokenrelay.cancels``                           req/reply  CancelRequest -> CancelReply
                                                            (queue group ``gateways``; any gateway
                                                            routes it to the stream's owner)
``tokenrelay.readers.<id>``                      req/reply  "does anyone read this stream?" (a
                                                            streamer with readers, or with a left
                                                            reader's grace running, answers; asked
                                                            by streamers and by the admitting
                                                            gateway's unread check)
``tokenrelay.holders.<id>``                      req/reply  "which runner generates this stream?" (the
                                                            one that does answers JobAccepted; a gateway
                                                            asks before it offers a job again whose
                                                            first offer got no answer in time)
``tokenrelay.runners.heartbeat``                 pub/sub    RunnerHeartbeat
``tokenrelay.streamers.lag``                     pub/sub    StreamerLag (a late streamer -> runners,
                                                            which then publish tokens in fewer
                                                            messages: ``runner/pace.py``)
``tokenrelay.api.start``                         req/reply  StartRequest -> StreamRecord|StartRefused
                                                            (queue group ``gateways``: admission for
                                                            the compatible APIs a streamer serves)
``tokenrelay.api.models``                        req/reply  ModelsRequest -> ModelList
                                                            (queue group ``gateways``)
``tokenrelay.feedback.<id>``                     JetStream  Feedback (file storage)
``$O.tokenrelay_payloads.>``                     object     a job or start request larger than the
                                                 store      broker's max_payload, whole (its own
                                                            message carries ``payload``, the object's
                                                            name, and no messages; TTL, size bound)
==============================================  =========  ===================================

Stream ids are 32 lowercase hex characters (128 random bits), so they are always valid
single subject tokens; anything else is rejected before it can reach a subject.

A model name may hold anything (``meta-llama/Llama-3.1-8B-Instruct``, ``qwen2.5:7b``), and ``.``, ``*``, ``>``,
whitespace and non-ASCII are special or unsafe in a subject: :func:`model_token` escapes it into one token that
reads like the name (letters, digits, ``-`` and ``_`` kept; every other UTF-8 byte as ``~`` and two hex digits),
and :func:`model_from_token` reverses it.
"""

from __future__ import annotations

import re
import secrets

JOBS_PREFIX = "tokenrelay.jobs"
"""Jobs of one model are offered on ``tokenrelay.jobs.<model token>`` (:func:`jobs`)."""
RUNNER_QUEUE_GROUP = "runners"
RUNNER_HEARTBEAT = "tokenrelay.runners.heartbeat"
CANCELS = "tokenrelay.cancels"
API_START = "tokenrelay.api.start"
API_MODELS = "tokenrelay.api.models"
GATEWAY_QUEUE_GROUP = "gateways"
READERS_WILDCARD = "tokenrelay.readers.*"
HOLDERS_WILDCARD = "tokenrelay.holders.*"
STREAMER_LAG = "tokenrelay.streamers.lag"

EVENTS_STREAM = "TOKENRELAY_EVENTS"
EVENTS_WILDCARD = "tokenrelay.stream.*.events"

FEEDBACK_STREAM = "TOKENRELAY_FEEDBACK"
FEEDBACK_WILDCARD = "tokenrelay.feedback.*"

STREAMS_BUCKET = "tokenrelay_streams"
JOBS_BUCKET = "tokenrelay_jobs"
"""KV bucket of every running stream's job as the runners were offered it (key: stream id): what a gateway offers
another runner when the stream's runner is lost (``gateway/migration.py``)."""
PAYLOADS_BUCKET = "tokenrelay_payloads"
"""Object store of requests too large for one NATS message (:mod:`tokenrelay.runtime.payloads`)."""
RESPONSES_BUCKET = "tokenrelay_responses"
"""KV bucket of stored responses' records (``POST /v1/responses``; :mod:`tokenrelay.runtime.responses`)."""
RESPONSE_EVENTS_BUCKET = "tokenrelay_response_events"
"""Object store of stored responses' events, written by the runner as the stream ends."""

_STREAM_ID = re.compile(r"[0-9a-f]{32}")
_NODE_ID = re.compile(r"[0-9a-z_-]{1,64}")
_MODEL_TOKEN = re.compile(r"(?:[0-9A-Za-z_-]|~[0-9A-F]{2})+")
_KEPT_IN_MODEL_TOKEN = frozenset(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-")
MODEL_ESCAPE = "~"
"""Starts the two uppercase hex digits of one escaped UTF-8 byte in a model token."""


def new_stream_id() -> str:
    """A fresh, unguessable stream id (128 random bits, hex)."""
    return secrets.token_hex(16)


def new_node_id(role: str) -> str:
    """An id for one gateway or runner process, e.g. ``runner-1f2e3d4c``."""
    return f"{role}-{secrets.token_hex(4)}"


def is_stream_id(value: str) -> bool:
    """Whether ``value`` has the exact shape of a stream id."""
    return _STREAM_ID.fullmatch(value) is not None


def _node(node_id: str) -> str:
    if _NODE_ID.fullmatch(node_id) is None:
        raise ValueError(f"invalid node id {node_id!r}")
    return node_id


def _stream(stream_id: str) -> str:
    if not is_stream_id(stream_id):
        raise ValueError(f"invalid stream id {stream_id!r}")
    return stream_id


def model_token(model: str) -> str:
    """``model`` as one subject token: letters, digits, ``-`` and ``_`` as they are, every other UTF-8 byte as
    ``~`` and its two uppercase hex digits (``qwen2.5:7b`` -> ``qwen2~2E5~3A7b``).  Reversed by
    :func:`model_from_token`; an empty name has no token (``ValueError``)."""
    if not model:
        raise ValueError("a model name must not be empty")
    return "".join(
        chr(byte) if byte in _KEPT_IN_MODEL_TOKEN else f"{MODEL_ESCAPE}{byte:02X}" for byte in model.encode()
    )


def model_from_token(token: str) -> str:
    """The model name :func:`model_token` made ``token`` from; ``ValueError`` for anything it cannot have made."""
    if _MODEL_TOKEN.fullmatch(token) is None:
        raise ValueError(f"invalid model token {token!r}")
    out = bytearray()
    i = 0
    while i < len(token):
        if token[i] == MODEL_ESCAPE:
            out.append(int(token[i + 1 : i + 3], 16))
            i += 3
        else:
            out.append(ord(token[i]))
            i += 1
    try:
        model = out.decode()
    except UnicodeDecodeError:
        raise ValueError(f"model token {token!r} is not UTF-8") from None
    if model_token(model) != token:  # e.g. "~41" for "A": one name, one token
        raise ValueError(f"model token {token!r} is not the token of {model!r}")
    return model


def jobs(model: str) -> str:
    """The subject jobs of ``model`` are offered on; the runners serving it take them in queue group ``runners``."""
    return f"{JOBS_PREFIX}.{model_token(model)}"


def events(stream_id: str) -> str:
    """The subject a runner publishes a stream's events on."""
    return f"tokenrelay.stream.{_stream(stream_id)}.events"


def replay(stream_id: str) -> str:
    """The subject the runner generating a stream answers history requests on (from memory)."""
    return f"tokenrelay.stream.{_stream(stream_id)}.replay"


def runner_cancel(runner_id: str) -> str:
    """The subject one runner takes cancel requests on."""
    return f"tokenrelay.runner.{_node(runner_id)}.cancel"


def runner_jobs(runner_id: str) -> str:
    """The subject one runner takes jobs addressed to it on (a moved stream's continuation, a retried offer)."""
    return f"tokenrelay.runner.{_node(runner_id)}.jobs"


def runner_ping(runner_id: str) -> str:
    """The subject one runner answers "are you alive?" on (with its heartbeat)."""
    return f"tokenrelay.runner.{_node(runner_id)}.ping"


def gateway_cancel(gateway_id: str) -> str:
    """The subject one gateway takes cancel requests on for streams it still holds queued."""
    return f"tokenrelay.gateway.{_node(gateway_id)}.cancel"


def gateway_done(gateway_id: str) -> str:
    """The subject runners tell one gateway on that a stream it admitted has finished."""
    return f"tokenrelay.gateway.{_node(gateway_id)}.done"


def holders(stream_id: str) -> str:
    """The subject that asks the runners which of them generates a stream."""
    return f"tokenrelay.holders.{_stream(stream_id)}"


def readers(stream_id: str) -> str:
    """The subject that asks the streamers whether anyone still reads a stream."""
    return f"tokenrelay.readers.{_stream(stream_id)}"


def feedback(stream_id: str) -> str:
    """The subject feedback for one stream is stored under."""
    return f"tokenrelay.feedback.{_stream(stream_id)}"
