"""The operations layer: telemetry, the dashboard's logic and the run report."""
