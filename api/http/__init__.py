"""The API's HTTP edge: middlewares that look at a request before any route does."""
