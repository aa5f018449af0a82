"""``tokenrelay loadtest``: many concurrent streams against a running deployment (or any OpenAI- or
Anthropic-compatible server), measured as users feel them.

Modules, sans-I/O first:

* :mod:`~tokenrelay.loadtest.stats` — bounded latency histograms, per-stream token accounting, run totals
* :mod:`~tokenrelay.loadtest.plan` — the typed configuration, value mixes and each stream's plan
* :mod:`~tokenrelay.loadtest.apis` — the APIs it speaks: each request, and each stream's accounting from its events
* :mod:`~tokenrelay.loadtest.svg` — hand-written SVG histogram and line chart
* :mod:`~tokenrelay.loadtest.codes` — the error codes of the load test's own failures and of error answers
* :mod:`~tokenrelay.loadtest.metrics` — parsing ``/metrics``; the sampler that polls every instance
* :mod:`~tokenrelay.loadtest.never_read` — readers that send their request and never read a byte
* :mod:`~tokenrelay.loadtest.compat` — streams over an OpenAI- or Anthropic-compatible API (one ``POST`` each)
* :mod:`~tokenrelay.loadtest.driver` — the asyncio load generator (stops go over one
  :class:`tokenrelay.client.control.ControlChannel`, shared by every stream)
* :mod:`~tokenrelay.loadtest.result` — what a run hands to its report
* :mod:`~tokenrelay.loadtest.report` — text table, JSON, SVG files and ``report.html``
* :mod:`~tokenrelay.loadtest.command` — the command-line options
"""
