"""The argument parser every ``tokenrelay`` command uses: one-line errors, flags from the environment, full help.

* An error is one line on standard error, ``tokenrelay streamer: error: --flush-interval-ms: must be >= 0, got
  -5``, and exit status 2 (argparse prints its usage first; a wrong value is easier to see alone).
* A flag not given on the command line is read from its environment variable, ``<prefix><FLAG>`` (the
  command's prefix, then the flag's name in capitals with ``_`` for ``-``: ``TOKENRELAY_GATEWAY_PORT``); a bad
  value there is an error that names the variable.  The flag wins over the variable, the variable over the
  default.  An empty variable counts as unset.  A repeatable flag's variable holds its values separated by
  commas; a switch's variable holds 1, true, yes, on, or 0, false, no, off.
* ``--help`` shows each flag's default and its variable.
"""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import Any, NoReturn

from tokenrelay.runtime.values import boolean

FROM_ENV = "_from_env"
"""The namespace attribute mapping each destination read from the environment to its variable's name."""
_ARGUMENT_PREFIX = re.compile(r"^argument ([^:]+): ")


class _Unset:
    """The mark of a flag the command line did not give (argparse's own default would be indistinguishable)."""

    def __repr__(self) -> str:
        return "<unset>"


UNSET: Any = _Unset()


class Repeat(argparse.Action):
    """Like ``action="append"``, except that the values given replace the default instead of adding to it."""

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: Any = None
    ) -> None:
        current = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, [*current, values] if isinstance(current, list) else [values])


def _accumulates(action: argparse.Action) -> bool:
    """Whether the action builds its value from the namespace's (then the default itself marks "not given")."""
    return isinstance(
        action, argparse._AppendAction | argparse._AppendConstAction | argparse._CountAction | argparse._ExtendAction
    )


def _repeats(action: argparse.Action) -> bool:
    return isinstance(action, Repeat | argparse._AppendAction | argparse._ExtendAction)


def show_default(value: Any) -> str:
    """A default as ``--help`` and the configuration reference show it."""
    if value is None or value in ("", ()):
        return "none"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, tuple | list):
        return ",".join(str(item) for item in value)
    return str(value)


class CommandLine(argparse.ArgumentParser):
    """An ``ArgumentParser`` with one-line errors whose flags may also come from ``env_prefix`` variables.

    ``env_names`` gives a flag (by destination) a variable of another name, for the variables that existed
    before this scheme; ``unsplit`` lists the repeatable flags whose variable holds one value (a text that
    may contain commas).  A parser without ``env_prefix`` reads nothing from the environment.
    """

    def __init__(
        self,
        *args: Any,
        env_prefix: str = "",
        env_names: Mapping[str, str] | None = None,
        unsplit: Collection[str] = (),
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.env_prefix = env_prefix
        self.env_names = dict(env_names or {})
        self.unsplit = frozenset(unsplit)
        self._documented: set[int] = set()

    def error(self, message: str) -> NoReturn:
        """Print one line, ``<prog>: error: <flag>: <what is wrong>``, and exit with status 2."""
        line = " ".join(_ARGUMENT_PREFIX.sub(r"\1: ", message).split())
        self.exit(2, f"{self.prog}: error: {line}\n")

    def env_name(self, action: argparse.Action) -> str | None:
        """The environment variable a flag may come from; ``None`` for ``--help`` and subcommands."""
        if not self.env_prefix or not action.option_strings or action.dest == argparse.SUPPRESS:
            return None
        if isinstance(action, argparse._SubParsersAction | argparse._HelpAction | argparse._VersionAction):
            return None
        return self.env_names.get(action.dest, f"{self.env_prefix}{action.dest.upper()}")

    def flags(self) -> Iterator[tuple[argparse.Action, str]]:
        """Each flag that may come from the environment, with its variable."""
        for action in self._actions:
            name = self.env_name(action)
            if name is not None:
                yield action, name

    def parse_known_args(  # type: ignore[override]
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        """Parse ``args``; then fill each flag not given from its variable, else its default."""
        namespace = namespace if namespace is not None else argparse.Namespace()
        for action, _ in self.flags():
            if not hasattr(namespace, action.dest):
                setattr(namespace, action.dest, action.default if _accumulates(action) else UNSET)
        parsed, extras = super().parse_known_args(args, namespace)
        namespace = parsed if parsed is not None else namespace
        from_env: dict[str, str] = {}
        for action, name in self.flags():
            value = getattr(namespace, action.dest)
            if not (value is UNSET or (_accumulates(action) and value is action.default)):
                continue
            text = os.environ.get(name, "")
            if text.strip():
                setattr(namespace, action.dest, self._from_env(action, name, text))
                from_env[action.dest] = name
            else:
                setattr(namespace, action.dest, self._default(action))
        if self.env_prefix:
            setattr(namespace, FROM_ENV, {**getattr(namespace, FROM_ENV, {}), **from_env})
        return namespace, extras

    def _default(self, action: argparse.Action) -> Any:
        # What argparse does with a default it did not need to parse: a string goes through the type.
        if isinstance(action.default, str) and callable(action.type):
            return self._convert(action, f"the default of {action.option_strings[0]}", action.default)
        return action.default

    def _from_env(self, action: argparse.Action, name: str, text: str) -> Any:
        if action.nargs == 0:  # a switch: store_true, store_const...
            try:
                on = boolean(text)
            except argparse.ArgumentTypeError as exc:
                self.error(f"{name}: {exc}")
            return action.const if on else action.default
        if _repeats(action):
            parts = [text] if action.dest in self.unsplit else [part for part in text.split(",") if part.strip()]
            return [self._convert(action, name, part.strip()) for part in parts]
        return self._convert(action, name, text.strip())

    def _convert(self, action: argparse.Action, name: str, text: str) -> Any:
        convert = action.type if callable(action.type) else str
        try:
            value = convert(text)
        except argparse.ArgumentTypeError as exc:
            self.error(f"{name}: {exc}")
        except (TypeError, ValueError):
            self.error(f"{name}: invalid {getattr(convert, '__name__', 'value')} value: {text!r}")
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(repr(choice) for choice in action.choices)
            self.error(f"{name}: invalid choice: {value!r} (choose from {choices})")
        return value

    def format_help(self) -> str:
        """The help, each flag's line ending in its default and its environment variable."""
        for action, name in self.flags():
            if id(action) in self._documented or action.help == argparse.SUPPRESS:
                continue
            self._documented.add(id(action))
            action.help = with_default_and_env(action.help or "", action.default, name)
        return super().format_help()


def with_default_and_env(help_text: str, default: Any, name: str) -> str:
    """``help_text`` ending in ``(default: ...; env: NAME)``; a ``(default: ...)`` it ends in already is kept."""
    text = help_text.rstrip()
    if text.endswith(")") and text.rfind("(default: ") >= 0:
        return f"{text[:-1]}; env: {name})"
    shown = show_default(default).replace("%", "%%")
    return f"{text} (default: {shown}; env: {name})".lstrip()


def given_as(args: argparse.Namespace, dest: str, flag: str) -> str:
    """What the user called the value of ``dest``: its environment variable if it came from there, else ``flag``."""
    return str(getattr(args, FROM_ENV, {}).get(dest, flag))
