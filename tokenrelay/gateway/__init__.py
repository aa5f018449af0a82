"""The gateway role: admission, dispatch of jobs to runners, stop and feedback (the control plane)."""
