"""The OpenAI-compatible facade under ``/openai/v1``: OpenAI's wire format onto native jobs and batches."""
