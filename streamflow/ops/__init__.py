"""The operations layer: the dashboard's logic and the run report (telemetry records live in stream/)."""
