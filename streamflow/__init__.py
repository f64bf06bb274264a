"""streamflow: online, trigger-style anomaly detection for collider event streams."""

__version__ = "0.1.0"
