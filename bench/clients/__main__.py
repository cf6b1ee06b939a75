"""``python -m bench.clients MODE [options]``: run one load process (see ``bench.clients``)."""

from __future__ import annotations

import argparse
import importlib

MODES = ("pool", "active", "zombie", "recv", "reconnecting", "cable", "setups")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.clients")
    modes = parser.add_subparsers(dest="mode", required=True)
    for name in MODES:
        module = importlib.import_module(f"bench.clients.{name}")
        p = modes.add_parser(name, help=(module.__doc__ or "").split("\n", 1)[0])
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--source", default=None, help="local address to connect from")
        p.add_argument("--max-seconds", type=float, default=600.0)
        module.arguments(p)
        p.set_defaults(run=module.run)
    a = parser.parse_args(argv)
    a.max_seconds = min(a.max_seconds, 3600.0)
    if hasattr(a, "duration"):
        a.duration = min(a.duration, 3600.0)
    a.run(a)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
