"""The trader service."""
