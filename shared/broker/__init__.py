"""The Celery queue both sides agree on, as plain data (no celery import in shared)."""
