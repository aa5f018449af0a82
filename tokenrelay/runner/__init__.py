"""The runner role: takes jobs from NATS, drives an inference engine, publishes tokens, obeys cancels."""
