"""tokenrelay: stream LLM tokens to people fast, and stop generations at once.

This package holds what crosses process boundaries: NATS subjects, wire messages and
their codec, the error vocabulary, typed configuration and the command line.  The roles
themselves live in the top-level packages ``gateway``, ``runner`` and ``streamer``.
"""

__version__ = "0.1.0"
