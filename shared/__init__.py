"""Factory Line's common library: configuration, domain models, the broker contract and its Alpaca
adapter, the Redis bus. Never imports `services`, nor the optional `sim` and `demo` packages
(tests/test_layout.py)."""
