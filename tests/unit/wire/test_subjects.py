"""Spec of the subject topology: stream and node ids are checked before they reach a subject."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tokenrelay.wire import subjects

SID = "0123456789abcdef0123456789abcdef"

BAD_STREAM_IDS = [
    "",
    SID[:31],
    SID + "0",
    SID.upper(),
    "0123456789ABCDEF0123456789abcdef",
    "g" * 32,
    SID[:31] + ".",
    SID[:31] + "*",
    SID[:31] + ">",
    SID[:31] + " ",
    SID[:16] + "." + SID[17:],
    " " + SID[1:],
    SID + "\n",
    "*",
    ">",
    "a.b",
]

BAD_NODE_IDS = [
    "",
    "runner.1",
    "runner-*",
    "runner->",
    "*",
    ">",
    "runner 1",
    "Runner-1",
    "RUNNER",
    "runner-1\n",
    "r" * 65,
    "rünner",
]


def test_new_stream_id_is_32_lowercase_hex_characters() -> None:
    stream_id = subjects.new_stream_id()
    assert len(stream_id) == 32
    assert set(stream_id) <= set("0123456789abcdef")
    assert subjects.is_stream_id(stream_id)


def test_new_stream_ids_are_unique() -> None:
    ids = {subjects.new_stream_id() for _ in range(1000)}
    assert len(ids) == 1000


def test_is_stream_id_accepts_32_lowercase_hex_characters() -> None:
    assert subjects.is_stream_id(SID)
    assert subjects.is_stream_id("f" * 32)


@pytest.mark.parametrize("value", BAD_STREAM_IDS)
def test_is_stream_id_rejects_anything_else(value: str) -> None:
    assert not subjects.is_stream_id(value)


def test_events_subject_embeds_the_stream_id() -> None:
    assert subjects.events(SID) == f"tokenrelay.stream.{SID}.events"


def test_feedback_subject_embeds_the_stream_id() -> None:
    assert subjects.feedback(SID) == f"tokenrelay.feedback.{SID}"


@pytest.mark.parametrize("subject", [subjects.events, subjects.feedback])
@pytest.mark.parametrize("value", BAD_STREAM_IDS)
def test_stream_subjects_refuse_invalid_stream_id(subject: Callable[[str], str], value: str) -> None:
    with pytest.raises(ValueError, match="invalid stream id"):
        subject(value)


def test_cancel_subjects_embed_the_node_id() -> None:
    assert subjects.runner_cancel("runner-1f2e3d4c") == "tokenrelay.runner.runner-1f2e3d4c.cancel"
    assert subjects.gateway_cancel("gateway_a") == "tokenrelay.gateway.gateway_a.cancel"


@pytest.mark.parametrize("role", ["runner", "gateway"])
def test_new_node_id_is_accepted_by_the_cancel_subjects(role: str) -> None:
    node_id = subjects.new_node_id(role)
    assert node_id.startswith(f"{role}-")
    assert subjects.runner_cancel(node_id) == f"tokenrelay.runner.{node_id}.cancel"
    assert subjects.gateway_cancel(node_id) == f"tokenrelay.gateway.{node_id}.cancel"


def test_cancel_subjects_accept_a_node_id_of_64_characters() -> None:
    assert subjects.runner_cancel("r" * 64) == f"tokenrelay.runner.{'r' * 64}.cancel"


@pytest.mark.parametrize("subject", [subjects.runner_cancel, subjects.gateway_cancel])
@pytest.mark.parametrize("value", BAD_NODE_IDS)
def test_cancel_subjects_refuse_invalid_node_id(subject: Callable[[str], str], value: str) -> None:
    with pytest.raises(ValueError, match="invalid node id"):
        subject(value)
