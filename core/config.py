"""Server settings shared by the supervisor and every shard (passed to a shard as JSON).

Defaults and what they cost are stated per field; the CLI help repeats them.
"""

from __future__ import annotations

import msgspec


class ServerConfig(msgspec.Struct, kw_only=True, frozen=True):
    host: str = "127.0.0.1"
    port: int = 8080
    shards: int = 8
    app: str = "demo"  # "demo", "echo" or "module:attr"
    heartbeat_interval: float = 30.0  # medium preset
    heartbeat_timeout: float = 60.0
    # Seconds a draining shard waits for clients to leave before closing them hard.
    drain_timeout: float = 30.0
    # reconnect_after_ms told to clients on shutdown: at least this...
    reconnect_after_ms: int = 1000
    # ...plus each client's share of this window on a rolling restart (no thundering herd).
    reconnect_window_ms: int = 2000
    # Largest message a client may send (bytes); above it the connection is closed 1009.
    # Each connection may buffer up to message_queue x this before the app reads it.
    max_message_size: int = 64 * 1024
    # Inbound messages buffered per connection by trio-websocket before reading pauses.
    message_queue: int = 16
    # Outbound messages queued per connection; past it the client is a slow consumer
    # and is closed 1008 (memory per connection is bounded by this x message size).
    max_outbound_queue: int = 1024
    # Seconds a client has to complete the HTTP upgrade (slowloris bound).
    handshake_timeout: float = 10.0
    # Seconds to wait for the closing handshake before dropping the TCP connection.
    close_timeout: float = 5.0
    # Seconds an away session keeps its seat (the app's AI plays for it meanwhile).
    grace: float = 120.0
    # Stream messages kept per session for replay; an older gap makes the resume say
    # replay_gap and the app send a snapshot. Memory: this many references per session.
    replay_buffer: int = 1024
    # File with the HMAC secret shared by all shards (created, 0600, if absent).
    secret_file: str = ".ws-secret"
    # Route a resume to the shard holding the session (one fd pass) instead of fetching the
    # session's state to the shard the kernel picked (one state transfer). Fetching is what
    # a multi-machine deployment must do, where fds cannot travel.
    route_resumes: bool = True
    # Seconds a shard waits for another shard to hand over a resumed session.
    fetch_timeout: float = 5.0
    # Demo game (Race to 21 in rooms): seconds per move, and how soon the AI moves for an
    # away player.
    turn_seconds: float = 10.0
    ai_think_seconds: float = 0.5
    # Shards well above the mean connection count pause accepting for a moment
    # (core/balance.py); off only to measure the kernel's own skew.
    balance_accept: bool = True
    # Seconds between session checkpoints to the supervisor; a shard that crashes loses
    # at most this much of its sessions' state (resumes then say recovered + replay_gap).
    # Cost: one msgpack snapshot of each changed session per interval.
    checkpoint_interval: float = 1.0
    # Origins allowed to connect (browser Origin header); empty = any. Others get 403.
    allowed_origins: tuple[str, ...] = ()
    # Connections per shard; beyond it new ones get HTTP 503 + Retry-After before the
    # upgrade. None = no limit (the 20,000-fd process cap then decides).
    max_connections: int | None = 10_000
    # Per-connection message rate (token bucket): average per second, and burst. A client
    # that sends faster is closed 1008 "message rate limit".
    max_message_rate: float = 100.0  # room for a 60 Hz input stream plus chat
    message_burst: float = 200.0
    # Unix socket for `python -m supervisor status|reload` (0600).
    control_socket: str = ".ws-supervisor.sock"
    # Serve /metrics (Prometheus) and /status (JSON) over HTTP on host:metrics_port (0 = any
    # free port, logged as metrics_ready); None = no metrics server.
    metrics_port: int | None = None
    # Freeze the start-up heap and raise GC thresholds in shards (see shards.__main__).
    gc_tuning: bool = True


class ShardConfig(msgspec.Struct, kw_only=True, frozen=True):
    index: int
    generation: int
    server: ServerConfig
    # Unix time the supervisor started (0 = unknown). Every session it can find lives in
    # its memory (directory, checkpoints), so a token issued before then names a session
    # of an earlier run: a shard refuses it at once instead of routing and fetching it.
    booted_at: float = 0.0
