"""A client's batches: many items sharing options, each item a job. Imports shared.jobs, never the reverse."""
