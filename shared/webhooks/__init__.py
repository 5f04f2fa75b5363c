"""Webhooks: the delivery contract, per-owner signing secrets, and the one builder for job and batch events."""
