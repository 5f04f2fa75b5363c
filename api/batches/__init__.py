"""The API side of a client's batches: creating, appending, canceling, and closing ended batches."""
