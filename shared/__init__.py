"""Factory Line's common library: configuration, domain models, the broker contract and its
adapters, the Redis bus, and the simulated market engine. Never imports `services`."""
