"""The parent process: binds once, runs N shards, relays broadcasts, respawns, shuts down."""
