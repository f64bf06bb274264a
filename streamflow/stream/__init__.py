"""The stream layer: the wire format, sockets, pacing, the END_OF_STREAM handshake, the journal, the ledger,
the selections file and the telemetry records every process publishes."""
