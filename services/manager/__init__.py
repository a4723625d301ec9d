"""The manager service."""
