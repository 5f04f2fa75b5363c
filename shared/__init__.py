"""The contract between the API and the workers: settings, job schema, store, keys and errors."""

from shared.settings import Settings

__all__ = ["Settings"]
