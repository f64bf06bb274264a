"""The stream layer: the wire format, sockets, pacing, the END_OF_STREAM handshake, the journal, the ledger and the selections file."""
