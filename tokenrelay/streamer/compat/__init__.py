"""Compatible APIs on the data plane: OpenAI chat completions and Anthropic messages (sans-I/O parts)."""
