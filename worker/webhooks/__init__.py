"""Webhook delivery in the light webhook worker: the Celery tasks, one attempt per call, and the signed POST."""
