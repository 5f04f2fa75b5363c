"""The HTTP edge: problem responses, security headers, rate limits, API keys, OpenAPI touches, Prefer."""
