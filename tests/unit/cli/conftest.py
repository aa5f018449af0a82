"""Running the command line in this process, with nothing it could start left able to start."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tokenrelay.cli import main as cli
from tokenrelay.cli import supervisor
from tokenrelay.cli.commands import ENV_PREFIX


@dataclass
class Outcome:
    """What one run of ``tokenrelay ...`` did."""

    status: int
    stderr: str

    @property
    def lines(self) -> list[str]:
        return self.stderr.splitlines()


def _refuse_to_start(*_: Any, **__: Any) -> Any:
    raise AssertionError("the command line started something it should have refused")


@pytest.fixture(autouse=True)
def nothing_starts(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No role, NATS, load test or export may start: every case here is refused before that."""
    monkeypatch.setattr(cli, "run_role", _refuse_to_start)
    monkeypatch.setattr(supervisor, "start_nats", _refuse_to_start)
    monkeypatch.setattr(supervisor, "spawn", _refuse_to_start)
    monkeypatch.setattr("tokenrelay.loadtest.command.run", _refuse_to_start)
    monkeypatch.setattr("tokenrelay.cli.feedback.export", _refuse_to_start)
    for name in os.environ:
        if name.startswith(ENV_PREFIX) and name != "TOKENRELAY_TOKEN_SECRET":
            monkeypatch.delenv(name)
    yield


@pytest.fixture
def run_cli(capsys: pytest.CaptureFixture[str]) -> Any:
    """``run_cli(*argv)``: the exit status of ``tokenrelay argv...`` run in this process, and its standard error."""

    def run(*argv: str) -> Outcome:
        try:
            status = cli.main(list(argv))
        except SystemExit as exc:
            status = exc.code if isinstance(exc.code, int) else 1
        return Outcome(status, capsys.readouterr().err)

    return run
