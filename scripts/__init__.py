"""Developer tooling: starting the local stack (``make run``) and the process helpers tests and benchmarks share."""
