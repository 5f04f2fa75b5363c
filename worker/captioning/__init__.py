"""Captioning: one job's delivery (pipeline), model batches, prompt shares, task messages of a batch, stand-ins."""
