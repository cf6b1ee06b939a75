"""Entry point of a shard process, started by the supervisor (not by users):

    python -m shards --config JSON --listen-fd N [--control-fd M] [--secret-fd K] ...

The listening socket, the control socketpair end and the resume-token key (a sealed memfd
the supervisor filled once) are inherited file descriptors: a shard never opens the key
file, so every shard of one supervisor, replacements included, signs with the same key.
"""

from __future__ import annotations

import argparse
import gc
import socket
import sys

import msgspec
import trio

from core.config import ShardConfig
from core.tokens import read_shared_secret
from shards.app import load_app
from shards.load_table import LoadTable
from shards.log import log
from shards.shard import Shard


def tune_gc(enabled: bool) -> None:
    """Keep gen-2 collections from stalling a shard with thousands of connections.

    Everything alive after start-up (modules, the app) is frozen out of collection, and
    gen 0 runs every 50,000 allocations instead of 700: fewer, cheaper young collections,
    and the objects of a connection mostly die young or live as long as the connection.
    Cost: up to ~50,000 extra short-lived objects alive between collections (a few MB).
    """
    if not enabled:
        return
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shards", description=__doc__)
    parser.add_argument("--config", required=True, help="ShardConfig as JSON")
    parser.add_argument("--listen-fd", type=int, required=True)
    parser.add_argument("--control-fd", type=int, default=None)
    parser.add_argument("--handoff-fd", type=int, default=None)
    parser.add_argument("--load-fd", type=int, default=None)
    parser.add_argument(
        "--secret-fd",
        type=int,
        default=None,
        help="inherited fd holding the resume-token key (without it: --secret-file)",
    )
    args = parser.parse_args(argv)
    config = msgspec.json.decode(args.config, type=ShardConfig)
    secret = read_shared_secret(args.secret_fd) if args.secret_fd is not None else None
    listen_sock = socket.socket(fileno=args.listen_fd)
    control_sock = socket.socket(fileno=args.control_fd) if args.control_fd is not None else None
    try:
        app = load_app(
            config.server.app,
            turn_seconds=config.server.turn_seconds,
            ai_think_seconds=config.server.ai_think_seconds,
        )
    except Exception as exc:  # noqa: BLE001 - report a bad --app once, clearly
        log("app_load_failed", shard=config.index, app=config.server.app, error=repr(exc))
        return 2
    handoff_sock = socket.socket(fileno=args.handoff_fd) if args.handoff_fd is not None else None
    load_table = LoadTable(args.load_fd, config.server.shards) if args.load_fd is not None else None
    shard = Shard(config, listen_sock, control_sock, app, handoff_sock, load_table, secret=secret)
    tune_gc(config.server.gc_tuning)
    trio.run(shard.run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
