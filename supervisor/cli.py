"""Command line of ``python -m supervisor``: flags -> ``ServerConfig``."""

from __future__ import annotations

import argparse
import importlib.util
import socket

from core.cluster import check_public_url
from core.config import MAX_REPLAY_BYTES, ServerConfig
from core.forwarded import trusted_networks
from core.heartbeat import DEFAULT_PRESET, PRESETS, resolve

DESCRIPTION = """\
Run a WebSocket game server: one listening socket, N trio shard processes.

Signals: SIGTERM or SIGINT (Ctrl-C) = graceful shutdown: every client gets
server_shutdown and close 1012, shards get --drain-timeout to finish, exit 0.
A second SIGTERM/SIGINT kills the shards at once. SIGHUP = rolling restart: each
shard in turn is replaced by a fresh interpreter (new code), its rooms and sessions
are handed over, its clients reconnect and resume; nothing is lost.

Commands to a running supervisor (through --control-socket):
  python -m supervisor status   each shard: pid, generation, state, connections, rooms
  python -m supervisor reload   rolling restart (the same as SIGHUP)
"""


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 seconds, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m supervisor",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d = ServerConfig()
    p.add_argument(
        "--shards",
        type=int,
        default=d.shards,
        help=f"shard processes (default {d.shards}); each holds its own connections",
    )
    p.add_argument("--host", default=d.host, help=f"address to bind (default {d.host})")
    p.add_argument(
        "--port",
        type=int,
        default=d.port,
        help=f"TCP port (default {d.port}; 0 = any free port, printed when ready)",
    )
    p.add_argument(
        "--app",
        default=d.app,
        help="demo (default: echo/say/user_left), echo (raw frame echo, no "
        "welcome), or module:attr of your own app",
    )
    presets = ", ".join(
        f"{name} {pol.interval:g}s/{pol.timeout:g}s" for name, pol in PRESETS.items()
    )
    p.add_argument(
        "--heartbeat",
        default=DEFAULT_PRESET,
        choices=sorted(PRESETS),
        help=f"ping interval/timeout preset: {presets} (default {DEFAULT_PRESET}); "
        "a silent client is closed within interval + timeout + tick",
    )
    p.add_argument(
        "--heartbeat-interval",
        type=_positive,
        default=None,
        metavar="S",
        help="override the preset's ping interval (fractional seconds allowed)",
    )
    p.add_argument(
        "--heartbeat-timeout",
        type=_positive,
        default=None,
        metavar="S",
        help="override the preset's timeout after a ping",
    )
    p.add_argument(
        "--drain-timeout",
        type=_positive,
        default=d.drain_timeout,
        metavar="S",
        help=f"seconds shards wait for clients to go on shutdown before closing "
        f"them hard (default {d.drain_timeout:g})",
    )
    p.add_argument(
        "--reconnect-after-ms",
        type=int,
        default=d.reconnect_after_ms,
        metavar="MS",
        help=f"earliest reconnect hint sent on shutdown; hints are spread over one "
        f"more such window (default {d.reconnect_after_ms})",
    )
    p.add_argument(
        "--max-message-size",
        type=int,
        default=d.max_message_size,
        metavar="BYTES",
        help=f"largest client message; bigger closes 1009 (default "
        f"{d.max_message_size}). A connection buffers at most one partial message",
    )
    p.add_argument(
        "--max-outbound-bytes",
        type=int,
        default=d.max_outbound_bytes,
        metavar="BYTES",
        help=f"bytes queued for one client that the kernel would not take yet; past it "
        f"the client is a slow consumer, closed 1008 (default {d.max_outbound_bytes})",
    )
    p.add_argument(
        "--handshake-timeout",
        type=_positive,
        default=d.handshake_timeout,
        metavar="S",
        help=f"seconds to finish the HTTP upgrade (default {d.handshake_timeout:g})",
    )
    p.add_argument(
        "--grace",
        type=_positive,
        default=d.grace,
        metavar="S",
        help=f"seconds a disconnected player's session keeps its seat and can be resumed "
        f"on any shard (default {d.grace:g}); the session and its replay buffer stay in "
        f"memory that long",
    )
    p.add_argument(
        "--replay-buffer",
        type=int,
        default=d.replay_buffer,
        metavar="N",
        help=f"stream messages kept per session for replay on resume (default "
        f"{d.replay_buffer}); an older gap is reported as replay_gap",
    )
    p.add_argument(
        "--secret-file",
        default=d.secret_file,
        metavar="PATH",
        help=f"HMAC key for resume tokens (default {d.secret_file}); created (0600) if "
        f"absent; read once by the supervisor and handed to every shard through an "
        f"inherited fd, so a replacement shard always has the same key. The supervisor "
        f"refuses to start (exit 2) if it is a symlink, not a regular file, not yours, or "
        f"has any group/other permission",
    )
    p.add_argument(
        "--turn-seconds",
        type=_positive,
        default=d.turn_seconds,
        metavar="S",
        help=f"demo game: seconds for a move before the AI plays it (default {d.turn_seconds:g})",
    )
    p.add_argument(
        "--ai-think-seconds",
        type=_positive,
        default=d.ai_think_seconds,
        metavar="S",
        help=f"demo game: how soon the AI moves for an away player "
        f"(default {d.ai_think_seconds:g})",
    )
    p.add_argument(
        "--no-resume-routing",
        action="store_true",
        help="serve a lobby resume where the kernel accepted it and fetch the session "
        "from its holder, instead of passing the socket to the holder",
    )
    p.add_argument(
        "--reconnect-window-ms",
        type=int,
        default=d.reconnect_window_ms,
        metavar="MS",
        help=f"on a rolling restart, clients of a draining shard are told to come back "
        f"spread over this window after --reconnect-after-ms (default "
        f"{d.reconnect_window_ms})",
    )
    p.add_argument(
        "--no-accept-balancing",
        action="store_true",
        help="let the kernel alone pick which shard accepts (for measuring its skew)",
    )
    p.add_argument(
        "--checkpoint-interval",
        type=_positive,
        default=d.checkpoint_interval,
        metavar="S",
        help=f"seconds between session checkpoints; a crashed shard's players resume from "
        f"the last one (default {d.checkpoint_interval:g})",
    )
    p.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="accept only WebSocket upgrades whose Origin is one of these (repeatable); "
        "others get HTTP 403. Default: any origin",
    )
    p.add_argument(
        "--trusted-proxy",
        action="append",
        default=[],
        metavar="CIDR",
        help="a load balancer's address or network (repeatable): connections from it are "
        "counted under the client address its PROXY protocol header (HAProxy send-proxy-v2; "
        "v1 too) or else its X-Forwarded-For names (per-address caps, logs); from anyone "
        "else X-Forwarded-For is ignored and a PROXY header gets HTTP 400. Default: none",
    )
    p.add_argument(
        "--max-connections",
        type=int,
        default=d.max_connections,
        metavar="N",
        help=f"connections per shard; more get HTTP 503 + Retry-After before the upgrade "
        f"(default {d.max_connections}; 0 = no limit)",
    )
    p.add_argument(
        "--max-message-rate",
        type=_positive,
        default=d.max_message_rate,
        metavar="PER_S",
        help=f"messages per second a client may send on average (default "
        f"{d.max_message_rate:g}); a flood is closed 1008",
    )
    p.add_argument(
        "--message-burst",
        type=_positive,
        default=d.message_burst,
        metavar="N",
        help=f"messages a client may send at once above the rate (default {d.message_burst:g})",
    )
    p.add_argument(
        "--control-socket",
        default=d.control_socket,
        metavar="PATH",
        help=f"Unix socket for `python -m supervisor status|reload` (default {d.control_socket})",
    )
    p.add_argument(
        "--metrics-port",
        type=int,
        default=d.metrics_port,
        metavar="P",
        help="serve /metrics (Prometheus text) and /status (JSON) on --metrics-host:P "
        "(0 = any free port, logged as metrics_ready; default: off)",
    )
    p.add_argument(
        "--metrics-host",
        default=d.metrics_host,
        metavar="H",
        help=f"address the metrics server binds (default {d.metrics_host}, whatever --host "
        f"is: /metrics and /status have no authentication and show pids and counters)",
    )
    p.add_argument(
        "--history",
        type=int,
        default=d.history_s,
        metavar="S",
        help=f"seconds of one-a-second samples kept for /dashboard and `python -m supervisor "
        f"top` (default {d.history_s}: 15 minutes, about 1 KB a sample with 8 shards)",
    )
    p.add_argument(
        "--max-pending-rooms-per-address",
        type=int,
        default=d.max_pending_rooms_per_address,
        metavar="N",
        help=f"new rooms one client address may have placed on a shard and not yet "
        f"joined (handshake in flight); one more gets HTTP 503 + Retry-After: 1 (default "
        f"{d.max_pending_rooms_per_address}; 0 = no cap). IPv6 counts per /64; the table "
        f"holds the 16,384 most recently seen addresses (~200 bytes each)",
    )
    p.add_argument(
        "--room-placement-rate",
        type=float,
        default=d.room_placement_rate,
        metavar="PER_S",
        help=f"new rooms one client address may create per second on average (default "
        f"{d.room_placement_rate:g}; 0 = no limit); faster gets HTTP 503 + Retry-After: 1. "
        f"Joining an existing room is not limited",
    )
    p.add_argument(
        "--room-placement-burst",
        type=_positive,
        default=d.room_placement_burst,
        metavar="N",
        help=f"new rooms one client address may create at once above the rate (default "
        f"{d.room_placement_burst:g})",
    )
    p.add_argument(
        "--placement-timeout",
        type=_positive,
        default=d.placement_timeout,
        metavar="S",
        help="seconds a new room's placement waits for its shard to host it before it is "
        "released (the client left before its handshake); default --handshake-timeout + 5. "
        "Below the handshake timeout a slow client's room could be placed twice",
    )
    p.add_argument(
        "--relay-budget-bytes",
        type=int,
        default=d.relay_budget_bytes,
        metavar="BYTES",
        help=f"control frames queued to one shard before broadcasts to it are deferred; a "
        f"deferred shard catches up from the broadcast log, in order, once its queue has "
        f"drained (default {d.relay_budget_bytes} = 16 MiB: memory per stuck shard)",
    )
    p.add_argument(
        "--broadcast-log-bytes",
        type=int,
        default=d.broadcast_log_bytes,
        metavar="BYTES",
        help=f"recent broadcasts the supervisor keeps for shards that fell behind (default "
        f"{d.broadcast_log_bytes} = 32 MiB of supervisor memory); a shard further behind "
        f"gets a BroadcastGap and its players a replay_gap",
    )
    p.add_argument(
        "--max-pending-handshakes",
        type=int,
        default=d.max_pending_handshakes,
        metavar="N",
        help=f"connections per shard still reading their request head; more get HTTP 503 at "
        f"once (default {d.max_pending_handshakes}; each holds an fd and up to 8 KiB)",
    )
    p.add_argument(
        "--max-say-bytes",
        type=int,
        default=d.max_say_bytes,
        metavar="BYTES",
        help=f"longest say text in UTF-8 bytes; it is copied to every session, longer says get "
        f"an error reply (default {d.max_say_bytes})",
    )
    p.add_argument(
        "--replay-buffer-bytes",
        type=int,
        default=d.replay_buffer_bytes,
        metavar="BYTES",
        help=f"message bytes kept per session for replay, besides --replay-buffer's count "
        f"(default {d.replay_buffer_bytes} = 256 KiB; at most {MAX_REPLAY_BYTES}: a session must "
        f"fit one control frame when it moves)",
    )
    p.add_argument(
        "--max-away-sessions",
        type=int,
        default=d.max_away_sessions,
        metavar="N",
        help=f"away sessions (grace running) per shard; past it the oldest ends at once "
        f"(default {d.max_away_sessions}; each holds up to --replay-buffer-bytes)",
    )
    p.add_argument(
        "--max-away-per-address",
        type=int,
        default=d.max_away_per_address,
        metavar="N",
        help=f"away sessions per client address (per shard); past it that address's oldest "
        f"ends at once (default {d.max_away_per_address})",
    )
    p.add_argument(
        "--broadcast-rate",
        type=_positive,
        default=d.broadcast_rate,
        metavar="PER_S",
        help=f"broadcasts (says) clients may trigger per second per shard; more are refused "
        f"with an error to the sender (default {d.broadcast_rate:g})",
    )
    p.add_argument(
        "--broadcast-burst",
        type=_positive,
        default=d.broadcast_burst,
        metavar="N",
        help=f"broadcasts a shard may let through at once above the rate (default "
        f"{d.broadcast_burst:g})",
    )
    p.add_argument(
        "--fetch-timeout",
        type=_positive,
        default=d.fetch_timeout,
        metavar="S",
        help=f"seconds to get a session from another shard on resume, and for a roll's "
        f"replacement to take each unit before the roll aborts (default {d.fetch_timeout:g})",
    )
    p.add_argument(
        "--close-timeout",
        type=_positive,
        default=d.close_timeout,
        metavar="S",
        help=f"seconds a closing connection waits for the client's close frame before the "
        f"TCP connection is dropped (default {d.close_timeout:g})",
    )
    p.add_argument(
        "--roll-return-timeout",
        type=_positive,
        default=d.roll_return_timeout,
        metavar="S",
        help="longest a rolling restart waits for one shard's players to resume before the "
        "next shard; it moves on sooner once returns stop arriving (default: reconnect "
        "window + reconnect hint + 5 s)",
    )
    p.add_argument(
        "--durability",
        choices=("checkpoint", "stream"),
        default=d.durability,
        help="what a shard crash may cost: checkpoint = the sessions' last "
        "--checkpoint-interval (resumes say recovered + replay_gap; messages of that interval "
        "may be processed twice); stream = nothing, every session change is journaled to "
        "the supervisor before it reaches a client, at a CPU cost per message (see "
        f"BENCHMARKS.md) (default {d.durability})",
    )
    p.add_argument(
        "--cluster",
        default=d.cluster,
        metavar="REDIS_URL",
        help="join the cluster kept in this Redis (redis://HOST:PORT/DB; needs the"
        " [cluster] extra); every node must use the same --secret-file content"
        " (default: single machine, no Redis)",
    )
    p.add_argument(
        "--node",
        default=d.node,
        metavar="NAME",
        help="this node's name in the cluster, unique (default: the host name and --port)",
    )
    p.add_argument(
        "--public-url",
        default=d.public_url,
        metavar="URL",
        help="ws://HOST:PORT where clients reach this node; other nodes redirect a room's"
        " players here (default: ws://--host:--port)",
    )
    p.add_argument(
        "--cluster-says-kept",
        type=int,
        default=d.cluster_says_kept,
        metavar="N",
        help=f"says kept in the cluster's Redis stream (default {d.cluster_says_kept}); a node"
        " cut off for more says than this tells its players to resume with replay_gap",
    )
    p.add_argument(
        "--no-gc-tuning",
        action="store_true",
        help="keep CPython's default GC settings in shards (for benchmarking)",
    )
    return p


def config_from_args(argv: list[str] | None = None) -> ServerConfig:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.shards < 1:
        parser.error("--shards must be at least 1")
    if args.replay_buffer < 1:
        parser.error("--replay-buffer must be at least 1")
    if args.cluster_says_kept < 1:
        parser.error("--cluster-says-kept must be at least 1")
    if not 1 <= args.history <= 86400:
        parser.error("--history must be 1..86400 seconds")
    if args.metrics_port is not None and not 0 <= args.metrics_port <= 65535:
        parser.error("--metrics-port must be 0-65535")
    if args.max_pending_rooms_per_address < 0:
        parser.error("--max-pending-rooms-per-address must be >= 0")
    if args.room_placement_rate < 0:
        parser.error("--room-placement-rate must be >= 0")
    if args.placement_timeout is not None and args.placement_timeout < args.handshake_timeout:
        parser.error("--placement-timeout must be at least --handshake-timeout")
    if not 1 <= args.replay_buffer_bytes <= MAX_REPLAY_BYTES:
        parser.error(f"--replay-buffer-bytes must be 1-{MAX_REPLAY_BYTES}")
    for name in (
        "max_pending_handshakes",
        "max_say_bytes",
        "max_away_sessions",
        "max_away_per_address",
    ):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.relay_budget_bytes < 1 or args.broadcast_log_bytes < 1:
        parser.error("--relay-budget-bytes and --broadcast-log-bytes must be at least 1")
    policy = resolve(args.heartbeat, args.heartbeat_interval, args.heartbeat_timeout)
    try:
        trusted_networks(tuple(args.trusted_proxy))
    except ValueError as exc:
        parser.error(f"--trusted-proxy: {exc}")
    if args.cluster is not None:
        if not args.cluster.startswith(("redis://", "rediss://", "unix://")):
            parser.error("--cluster must be a redis://HOST:PORT/DB URL")
        if importlib.util.find_spec("coredis") is None:
            parser.error("--cluster needs coredis: pip install -e '.[cluster]'")
        if not args.port and not (args.node and args.public_url):
            parser.error("--cluster with --port 0 needs --node and --public-url")
        args.node = args.node or f"{socket.gethostname()}:{args.port}"
        try:
            args.public_url = check_public_url(args.public_url or f"ws://{args.host}:{args.port}")
        except ValueError as exc:
            parser.error(f"--public-url: {exc}")
    elif args.node or args.public_url:
        parser.error("--node and --public-url need --cluster")
    return ServerConfig(
        host=args.host,
        port=args.port,
        shards=args.shards,
        app=args.app,
        heartbeat_interval=policy.interval,
        heartbeat_timeout=policy.timeout,
        drain_timeout=args.drain_timeout,
        reconnect_after_ms=args.reconnect_after_ms,
        max_message_size=args.max_message_size,
        max_outbound_bytes=args.max_outbound_bytes,
        handshake_timeout=args.handshake_timeout,
        grace=args.grace,
        replay_buffer=args.replay_buffer,
        secret_file=args.secret_file,
        turn_seconds=args.turn_seconds,
        ai_think_seconds=args.ai_think_seconds,
        route_resumes=not args.no_resume_routing,
        allowed_origins=tuple(args.allowed_origin),
        trusted_proxies=tuple(args.trusted_proxy),
        max_connections=args.max_connections or None,
        max_message_rate=args.max_message_rate,
        message_burst=args.message_burst,
        checkpoint_interval=args.checkpoint_interval,
        balance_accept=not args.no_accept_balancing,
        control_socket=args.control_socket,
        reconnect_window_ms=args.reconnect_window_ms,
        gc_tuning=not args.no_gc_tuning,
        metrics_port=args.metrics_port,
        metrics_host=args.metrics_host,
        history_s=args.history,
        max_pending_rooms_per_address=args.max_pending_rooms_per_address,
        room_placement_rate=args.room_placement_rate,
        room_placement_burst=args.room_placement_burst,
        placement_timeout=args.placement_timeout,
        relay_budget_bytes=args.relay_budget_bytes,
        broadcast_log_bytes=args.broadcast_log_bytes,
        max_pending_handshakes=args.max_pending_handshakes,
        max_say_bytes=args.max_say_bytes,
        replay_buffer_bytes=args.replay_buffer_bytes,
        max_away_sessions=args.max_away_sessions,
        max_away_per_address=args.max_away_per_address,
        broadcast_rate=args.broadcast_rate,
        broadcast_burst=args.broadcast_burst,
        fetch_timeout=args.fetch_timeout,
        close_timeout=args.close_timeout,
        roll_return_timeout=args.roll_return_timeout,
        durability=args.durability,
        cluster=args.cluster,
        node=args.node,
        public_url=args.public_url,
        cluster_says_kept=args.cluster_says_kept,
    )
