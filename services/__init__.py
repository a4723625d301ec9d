"""Thin I/O shells around `shared`: RQ jobs, stream consumers, daemons, CLI wiring.
A service never imports another service."""
