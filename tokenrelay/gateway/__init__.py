"""The gateway role: admission, dispatch of jobs to runners, stop and feedback (the control plane)."""

ROLE = "gateway"
"""The ``role`` of the gateway's lifecycle log lines."""
