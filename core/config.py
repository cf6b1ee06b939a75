"""Server settings shared by the supervisor and every shard (passed to a shard as JSON).

Defaults and what they cost are stated per field; the CLI help repeats them.
"""

from __future__ import annotations

import msgspec

# A session moves between shards in one control frame (16 MiB): its replay buffer must fit.
MAX_REPLAY_BYTES = 8 * 1024 * 1024


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
    # A connection buffers at most one partial message: this + 14 bytes.
    max_message_size: int = 64 * 1024
    # Bytes queued for one client that the kernel would not take yet; past it the client
    # is a slow consumer, closed 1008. A resume may queue its replay on top, so memory per
    # slow reader is bounded by this + replay_buffer_bytes (plus the kernel's socket
    # buffer, up to net.ipv4.tcp_wmem's maximum, 4 MiB here).
    max_outbound_bytes: int = 1024 * 1024
    # Connections still before their upgrade (reading the request head), per shard; more
    # get HTTP 503 at once. Each costs one fd and at most 8 KiB of head.
    max_pending_handshakes: int = 1000
    # Largest say text (UTF-8 bytes): it is copied to every session; longer says are
    # refused with an error reply.
    max_say_bytes: int = 4096
    # Seconds a client has to complete the HTTP upgrade (slowloris bound).
    handshake_timeout: float = 10.0
    # Seconds to wait for the closing handshake before dropping the TCP connection.
    close_timeout: float = 5.0
    # Longest a rolling restart waits for one shard's moved players to resume (None =
    # reconnect window + reconnect hint + 5 s); it moves on once returns stop arriving.
    roll_return_timeout: float | None = None
    # Seconds an away session keeps its seat (the app's AI plays for it meanwhile).
    grace: float = 120.0
    # Stream messages kept per session for replay; an older gap makes the resume say
    # replay_gap and the app send a snapshot. Memory: this many references per session.
    replay_buffer: int = 1024
    # ...and at most this many bytes of message bodies (+80 per entry) per session.
    replay_buffer_bytes: int = 256 * 1024
    # Away sessions (grace running) per shard, and per client address; over a cap the
    # oldest away session of that shard or address ends at once (reason "evicted").
    # Worst case memory per shard: max_away_sessions x (replay_buffer_bytes + ~1 KiB).
    max_away_sessions: int = 10_000
    max_away_per_address: int = 256
    # Broadcasts (says) a shard may originate per second, and its burst; a broadcast over
    # the budget is refused (the demo app answers the sender with an error). Each one is
    # delivered to every session of every shard.
    broadcast_rate: float = 200.0
    broadcast_burst: float = 400.0
    # File with the HMAC secret for resume tokens (created O_EXCL, 0600, if absent). Only
    # the supervisor opens it, once at start; shards get the key through an inherited
    # sealed memfd. It must be a regular file (no symlink) owned by the effective user with
    # no group/other permission bits, or the supervisor refuses to start (exit 2).
    secret_file: str = ".ws-secret"
    # Route a resume to the shard holding the session (one fd pass) instead of fetching the
    # session's state to the shard the kernel picked (one state transfer). Fetching is what
    # a multi-machine deployment must do, where fds cannot travel.
    route_resumes: bool = True
    # Seconds a shard waits for another shard to hand over a resumed session; also how
    # long a rolling restart waits for the replacement to take one unit (a room, a lobby
    # slice) before it aborts with the old shard serving.
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
    # "checkpoint": the checkpoints above; a crash loses the shard's last interval (its
    # players resume recovered + replay_gap; client messages of that interval may be
    # processed twice). "stream": every session change is journaled to the supervisor
    # before the bytes it describes reach a client - a crash loses and doubles nothing -
    # at the cost of the journal's bytes and the supervisor's CPU per message.
    durability: str = "checkpoint"
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
    # Serve /metrics (Prometheus) and /status (JSON) over HTTP on metrics_host:metrics_port
    # (0 = any free port, logged as metrics_ready); None = no metrics server.
    metrics_port: int | None = None
    # Address the metrics server binds: loopback by default, whatever --host is, because it
    # has no authentication (a public address exposes status, pids and counters to anyone).
    metrics_host: str = "127.0.0.1"
    # Seconds of per-second samples the supervisor keeps for /dashboard and `top`
    # (core/history.py): about 1 KB a sample with 8 shards, ~1 MB at the default.
    history_s: int = 900
    # Room placements (supervisor, core/directory.RoomPlacements). Rooms one client address
    # may have placed and not yet hosted (handshakes in flight); one more gets HTTP 503 +
    # Retry-After: 1. 0 = no cap. Cost: ~200 bytes per address, at most 16,384 addresses.
    max_pending_rooms_per_address: int = 16
    # New rooms one client address may place per second on average (0 = no limit) and at
    # once; faster ones get HTTP 503 + Retry-After: 1. Joining an existing room is free.
    room_placement_rate: float = 20.0
    room_placement_burst: float = 50.0
    # Seconds a placed room waits for its owner to report it hosted before it is released
    # (the client left before its handshake); None = handshake_timeout + 5 s. Shorter frees
    # abandoned placements sooner but may release a room whose slow client is still in its
    # handshake (another shard may then host the same room).
    placement_timeout: float | None = None
    # Bytes of control frames queued to one shard before broadcasts to it are deferred (it
    # then catches up from the broadcast log, in order, once its writer has drained). Cost:
    # up to this much memory per stuck shard; broadcast frames are shared with the log.
    relay_budget_bytes: int = 16 * 1024 * 1024
    # Bytes of the most recent broadcast frames the supervisor keeps for shards that fell
    # behind; a shard further behind than this gets one BroadcastGap (its sessions report
    # replay_gap). Cost: this much supervisor memory once broadcasts have filled it.
    broadcast_log_bytes: int = 32 * 1024 * 1024
    # Freeze the start-up heap and raise GC thresholds in shards (see shards.__main__).
    gc_tuning: bool = True
    # Networks of proxies whose X-Forwarded-For names the client (core/forwarded.py); the
    # per-address caps then count the client's address, not the proxy's. Empty = none.
    trusted_proxies: tuple[str, ...] = ()
    # Cluster mode (supervisor/cluster.py): the Redis every node shares (redis://H:P/DB;
    # None = single machine, no Redis), this node's name (unique in the cluster) and the
    # URL clients reach this node at (ws://HOST:PORT: where other nodes redirect a room's
    # players). Cost: one Redis round trip per room claim and per lease renewal (1/s).
    cluster: str | None = None
    node: str = ""
    public_url: str = ""
    # Says kept in the cluster's Redis stream (approximately: Redis trims in whole nodes of
    # ~100 entries). A node cut off for more says than this catches up with a gap: its
    # players are told to resume (4003) and their resume reports replay_gap. Memory: up to
    # this many says' bodies (each at most --max-say-bytes) in Redis.
    cluster_says_kept: int = 10_000


class ShardConfig(msgspec.Struct, kw_only=True, frozen=True):
    index: int
    generation: int
    server: ServerConfig
    # Unix time the supervisor started (0 = unknown). Every session it can find lives in
    # its memory (directory, checkpoints), so a token issued before then names a session
    # of an earlier run: a shard refuses it at once instead of routing and fetching it.
    booted_at: float = 0.0
