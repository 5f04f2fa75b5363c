"""Recovery from dying workers: the running-jobs registry, redelivered jobs run alone, lost messages queued again."""
