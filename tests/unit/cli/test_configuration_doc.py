"""docs/configuration.md lists every flag of every command with its variable, and names no flag that does not exist."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tokenrelay.cli.commands import COMMANDS, build_parser, command_parsers

DOC = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"
SECTION = re.compile(r"^## `tokenrelay ([a-z ]+)`\s*$", re.M)
ROW = re.compile(r"^\| (`-[^|]+) \| `(TOKENRELAY_[A-Z0-9_]+)` \|", re.M)
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def documented() -> dict[str, dict[str, str]]:
    """Per command section: each flag in a table row's first cell -> the variable in its second."""
    text = DOC.read_text()
    starts = list(SECTION.finditer(text))
    sections: dict[str, dict[str, str]] = {}
    for i, start in enumerate(starts):
        body = text[start.end() : starts[i + 1].start() if i + 1 < len(starts) else len(text)]
        rows = sections.setdefault(start.group(1), {})
        for cell, variable in ROW.findall(body):
            for flag in re.findall(r"`(-[^`]+)`", cell):
                rows[flag] = variable
    return sections


def existing() -> dict[str, dict[str, str]]:
    """Per command: each of its flags -> its variable."""
    return {
        command: {flag: name for action, name in parser.flags() for flag in action.option_strings}
        for command, parser in command_parsers(build_parser()).items()
    }


def test_the_document_has_a_section_for_every_command_and_no_other() -> None:
    assert sorted(documented()) == sorted(COMMANDS)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_of_a_command_is_documented_with_its_variable(command: str) -> None:
    flags, rows = existing()[command], documented().get(command, {})
    missing = sorted(set(flags) - set(rows))
    assert not missing, f"docs/configuration.md does not list these flags of tokenrelay {command}: {missing}"
    wrong = {flag: (rows[flag], name) for flag, name in flags.items() if rows[flag] != name}
    assert not wrong, f"docs/configuration.md names the wrong variable (documented, real): {wrong}"


@pytest.mark.parametrize("command", COMMANDS)
def test_the_document_lists_no_flag_a_command_does_not_have(command: str) -> None:
    extra = sorted(set(documented().get(command, {})) - set(existing()[command]))
    assert not extra, f"docs/configuration.md lists flags tokenrelay {command} does not have: {extra}"


def test_every_flag_the_document_names_exists() -> None:
    known = {flag for flags in existing().values() for flag in flags} | {"--help"}
    unknown = sorted(set(FLAG.findall(DOC.read_text())) - known)
    assert not unknown, f"docs/configuration.md names flags no command has: {unknown}"
