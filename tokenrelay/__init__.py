"""tokenrelay: stream LLM tokens to people fast, and stop generations at once.

Layers, each importing only those listed before it:

* :mod:`tokenrelay.wire` — the wire contract (subjects, messages, codec, errors, cursor);
* :mod:`tokenrelay.runtime` — what every role's process shares (configuration, NATS, HTTP serving, auth);
* the roles :mod:`tokenrelay.gateway`, :mod:`tokenrelay.runner`, :mod:`tokenrelay.streamer` (none imports another);
* :mod:`tokenrelay.client` (the native API's Python client) and :mod:`tokenrelay.loadtest` (the load tool);
* :mod:`tokenrelay.cli` and :mod:`tokenrelay.testing`, which may use everything.
"""

__version__ = "0.2.0"
