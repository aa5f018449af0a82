"""The wire protocol's version, and how a field a sender did not know decodes."""

from __future__ import annotations

PROTOCOL_VERSION = 4
"""The wire protocol this code speaks (2: typed content; 3: jobs may carry a raw ``prompt``; 4: a runner takes jobs
addressed to it on ``tokenrelay.runner.<id>.jobs``), sent as ``v`` on
:class:`JobRequest`,
:class:`StreamStart`, :class:`RunnerHeartbeat` and :class:`StartRequest`.  A message without ``v`` comes from a
process older than the field: it decodes as version 1 (:data:`WHEN_ABSENT`)."""
WHEN_ABSENT = "when_absent"
"""Field metadata: the value the codec gives a field that a decoded message lacks, where it differs from the
default a message built here gets."""
