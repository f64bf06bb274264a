"""The scoring layer, without sockets: the frame scorer (test-then-train, then the trigger) and its presets,
a scorer's state on its stream (counts, telemetry record, ledger), the SELECTION message, durability
(checkpoint, resume, crash recovery), the merge of data-parallel ranks, and the streamed mjj histogram."""
