"""A real tokenrelay system on loopback ports, for tests and benchmarks (this project's and yours).

* :mod:`.procs` — a nats-server from the installed wheel and role processes on free 127.0.0.1 ports, stopped by PID;
* :mod:`.sse` — a raw Server-Sent Events reader that keeps every event with its arrival time;
* :mod:`.http` — JSON requests, stream creation, metrics, and a reader that never reads;
* :mod:`.nginx` — a deployment's nginx config in front of a system.
"""
