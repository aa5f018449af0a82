"""Counting received messages of types this process does not know (a newer process's, mid-upgrade).

One counter per role, labelled by type (bounded by :class:`~tokenrelay.wire.codec.UnknownTypes`), and one warning
line per type, not per message.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter

from tokenrelay.wire.codec import UnknownTypes


class UnknownTypeCounter:
    """Counts each message of an unknown type under ``name``; logs the first of each type: what this process does
    with it (``doing``) and who likely sent it (``sender``)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        *,
        registry: CollectorRegistry,
        log: logging.Logger,
        doing: str,
        sender: str,
    ) -> None:
        self.counter = Counter(name, documentation, ["type"], registry=registry)
        self._name = name
        self._log = log
        self._doing = doing
        self._sender = sender
        self._types = UnknownTypes()

    def __call__(self, tag: str) -> None:
        """Count one message of type ``tag``; log it when it is the first of its label."""
        noted = self._types.note(tag)
        self.counter.labels(type=noted.label).inc()
        if noted.first:
            self._log.warning(
                "%s of unknown type %r (from %s?); counted in %s_total",
                self._doing,
                noted.label,
                self._sender,
                self._name,
            )
