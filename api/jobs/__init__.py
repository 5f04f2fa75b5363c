"""Single-job concerns of the API: cancel, idempotency, long-poll events, listing, prompt limits."""
