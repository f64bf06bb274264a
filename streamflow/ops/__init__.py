"""The operations layer: the live dashboard's logic and the run report (both read telemetry records)."""
