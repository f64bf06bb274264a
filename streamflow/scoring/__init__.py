"""The scoring layer: the frame scorer (test-then-train, then the trigger), its presets, checkpoints and the scorer's durability and rank-merging logic, without sockets."""
