"""The worker's side of the broker: the only modules that know kombu's internals."""
