"""Processes that send events: the replay producer, and the proxy that joins several senders."""
