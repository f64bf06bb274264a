"""Offline studies built on the library: analyses a physicist runs after (or instead of) a live stream."""
