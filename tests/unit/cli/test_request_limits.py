"""The request limits are flags (and variables): the gateway's body, tools, content parts and image size, the
streamer's body; ``up`` passes one ``--max-body-bytes`` to both."""

from __future__ import annotations

import argparse

import pytest

from tokenrelay.cli.commands import build_parser
from tokenrelay.cli.main import gateway_config, streamer_config
from tokenrelay.cli.plan import plan
from tokenrelay.runtime import config as c

NATS_URL = "nats://127.0.0.1:4222"


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_the_json_apis_take_a_body_with_two_of_the_largest_images_by_default() -> None:
    assert gateway_config(parse("gateway")).max_body_bytes == c.DEFAULT_MAX_BODY_BYTES
    assert streamer_config(parse("streamer")).max_body_bytes == c.DEFAULT_MAX_BODY_BYTES
    # Two images of the largest size, as base64 data URLs, fit in one body.
    assert 2 * (c.DEFAULT_MAX_IMAGE_BYTES * 4 // 3) < c.DEFAULT_MAX_BODY_BYTES


def test_the_gateways_typed_limits_come_from_flags() -> None:
    args = parse(
        "gateway", "--max-tools", "3", "--max-content-parts", "4",
        "--max-image-bytes", "5000", "--max-body-bytes", "6000",
    )  # fmt: skip
    config = gateway_config(args)
    assert (config.max_tools, config.max_content_parts, config.max_image_bytes, config.max_body_bytes) == (
        3, 4, 5000, 6000,
    )  # fmt: skip


def test_the_gateways_typed_limits_default_to_their_named_defaults() -> None:
    config = gateway_config(parse("gateway"))
    assert (config.max_tools, config.max_content_parts, config.max_image_bytes) == (
        c.DEFAULT_MAX_TOOLS, c.DEFAULT_MAX_CONTENT_PARTS, c.DEFAULT_MAX_IMAGE_BYTES,
    )  # fmt: skip


def test_the_limits_come_from_their_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TOKENRELAY_GATEWAY_MAX_IMAGE_BYTES", "1234")
    monkeypatch.setenv("TOKENRELAY_STREAMER_MAX_BODY_BYTES", "4321")
    assert gateway_config(parse("gateway")).max_image_bytes == 1234
    assert streamer_config(parse("streamer")).max_body_bytes == 4321


@pytest.mark.parametrize("value", ["0", "-1", "lots"])
def test_a_limit_that_is_not_a_positive_count_is_refused(value: str) -> None:
    with pytest.raises(SystemExit) as exited:
        parse("gateway", "--max-image-bytes", value)
    assert exited.value.code == 2


def test_up_passes_one_body_limit_to_the_gateway_and_the_streamer() -> None:
    children = {child.name: child for child in plan(parse("up", "--max-body-bytes", "7777"), NATS_URL)}
    for name, config in (("gateway", gateway_config), ("streamer", streamer_config)):
        argv = children[name].argv
        assert config(build_parser().parse_args(argv[3:])).max_body_bytes == 7777
