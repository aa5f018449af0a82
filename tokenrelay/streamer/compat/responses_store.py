"""What the streamer keeps of a stored response, sans-I/O: its record, and the key it is kept under.

The key is ``o<owner digest>.<bg|fg>.<stream id>``: the owner's digest (of its tenant name; the empty name without
API keys) keeps one tenant's responses apart from another's, so a response is found only under its owner's key
(another tenant's id is ``404``) and a tenant's background responses are counted by listing its ``bg`` keys.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import orjson

from tokenrelay.streamer.compat.common import openai_message
from tokenrelay.streamer.compat.response_events import ResponseHead, response_id
from tokenrelay.wire.codec import CodecError
from tokenrelay.wire.content import ChatMessage, JsonObject
from tokenrelay.wire.errors import TokenRelayError

OWNER_DIGEST_CHARS = 32


def owner_prefix(owner: str | None) -> str:
    """The first token of an owner's keys."""
    return "o" + hashlib.sha256((owner or "").encode()).hexdigest()[:OWNER_DIGEST_CHARS]


def record_key(owner: str | None, stream_id: str, *, background: bool) -> str:
    """The KV key of a response's record."""
    return f"{owner_prefix(owner)}.{'bg' if background else 'fg'}.{stream_id}"


def background_prefix(owner: str | None) -> str:
    """The key prefix of an owner's background responses (for counting them)."""
    return f"{owner_prefix(owner)}.bg."


@dataclass(frozen=True, slots=True)
class StoredResponse:
    """A stored response's record: the Response's head and the conversation a later response may continue."""

    stream_id: str
    epoch: str
    created_at: int
    model: str
    background: bool
    echo: JsonObject
    conversation: tuple[ChatMessage, ...]
    """The messages the response answered, its instructions left out (they do not carry over to a next one)."""
    input_messages: int = 0
    """How many of the last :attr:`conversation` messages are this request's own input (the rest came from
    ``previous_response_id``)."""

    @property
    def own_input(self) -> tuple[ChatMessage, ...]:
        """The messages of this request's own input."""
        return self.conversation[len(self.conversation) - self.input_messages :]

    @property
    def head(self) -> ResponseHead:
        return ResponseHead(
            id=response_id(self.stream_id), created_at=self.created_at, model=self.model, echo=self.echo
        )

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "stream_id": self.stream_id, "epoch": self.epoch, "created_at": self.created_at, "model": self.model,
                "background": self.background, "echo": self.echo,
                "conversation": [message.to_openai() for message in self.conversation],
                "input_messages": self.input_messages,
            }
        )  # fmt: skip

    @classmethod
    def decode(cls, data: bytes) -> StoredResponse:
        """A record this module encoded (``CodecError`` for anything else)."""
        try:
            obj: Any = orjson.loads(data)
            return cls(
                stream_id=str(obj["stream_id"]), epoch=str(obj["epoch"]), created_at=int(obj["created_at"]),
                model=str(obj["model"]), background=bool(obj["background"]), echo=dict(obj["echo"]),
                conversation=tuple(
                    openai_message(f"conversation[{i}]", m) for i, m in enumerate(obj["conversation"])
                ),
                input_messages=int(obj.get("input_messages", 0)),
            )  # fmt: skip
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, TokenRelayError) as exc:
            raise CodecError(f"not a stored response record: {exc}") from None
