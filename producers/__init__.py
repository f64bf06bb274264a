"""Processes that send events: the replay producer."""
