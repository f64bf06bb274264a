"""Processes that receive frames: the scorer, the sink and the monitor."""
