"""The API's side of the Celery queue: it publishes caption work by task name and never imports the worker."""
