"""The streamer service."""
