"""The scheduler: enqueues the day's RQ jobs at New York times on the broker's trading days."""
