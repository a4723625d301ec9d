"""Thin I/O shells around `shared`: RQ jobs, stream consumers, daemons, CLI wiring.
A service never imports another service, nor the optional `sim` and `demo` packages (only the
`factoryline sim` and `factoryline demo` commands reach them, tests/test_layout.py)."""
