"""Image intake in the worker: bounded, SSRF-safe downloads, per-key fetch shares and robust decoding."""
