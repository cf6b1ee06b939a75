"""``python -m supervisor --shards 8``: see ``--help``."""

from __future__ import annotations

import argparse
import json
import sys

import trio

from core.config import ServerConfig
from supervisor import control_socket, top
from supervisor.arbiter import Supervisor
from supervisor.cli import config_from_args


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in ("status", "reload", "drain"):
        return command(args[0], args[1:])
    if args and args[0] == "top":
        return top.main(args[1:])
    config = config_from_args(args)
    return trio.run(Supervisor(config).run)


def command(name: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m supervisor {name}")
    parser.add_argument("--control-socket", default=ServerConfig().control_socket)
    parser.add_argument("--json", action="store_true", help="print the raw JSON")
    args = parser.parse_args(argv)
    try:
        reply = control_socket.request(args.control_socket, name)
    except OSError as exc:
        print(f"no supervisor answers on {args.control_socket}: {exc}", file=sys.stderr)
        return 1
    if args.json or name != "status":
        print(json.dumps(reply))
    else:
        print(control_socket.format_status(reply))
    return 0


if __name__ == "__main__":
    sys.exit(main())
