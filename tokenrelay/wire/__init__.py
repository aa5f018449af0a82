"""The wire contract: what crosses process boundaries over NATS.

Subjects and JetStream assets (:mod:`.subjects`), the message dataclasses (:mod:`.messages`) and their one codec
(:mod:`.codec`), the error vocabulary with stable codes (:mod:`.errors`), the SSE cursor (:mod:`.cursor`) and the
framing of a runner's history pages (:mod:`.replay`).  Every module here is sans-I/O and imports nothing of tokenrelay
outside this package.
"""
