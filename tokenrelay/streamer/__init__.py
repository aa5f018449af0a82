"""The streamer role: SSE readers fed from NATS, with history replay for late and resuming readers."""
